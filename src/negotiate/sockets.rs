//! Which agents have a negotiation socket open on this instance, so that news about their
//! deals (a settlement's outcome) reaches them on it. A socket registers when it opens and is
//! forgotten when its [`Registration`] drops; frames sent to an agent go to every socket it
//! holds here. Nobody listening is fine: the durable answer is `GET /agent/v1/deals/{id}`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::sync::mpsc;

type Senders = HashMap<String, Vec<(u64, mpsc::UnboundedSender<Value>)>>;

/// The agents' open sockets on this instance.
#[derive(Default)]
pub struct AgentSockets {
    next: AtomicU64,
    by_agent: Mutex<Senders>,
}

/// A socket's place in [`AgentSockets`]; dropping it forgets the socket.
pub struct Registration {
    sockets: Arc<AgentSockets>,
    agent_id: String,
    id: u64,
}

impl AgentSockets {
    /// Registers a socket of `agent_id`; frames for the agent arrive on the receiver.
    pub fn register(
        self: &Arc<Self>,
        agent_id: &str,
    ) -> (Registration, mpsc::UnboundedReceiver<Value>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        if let Ok(mut map) = self.by_agent.lock() {
            map.entry(agent_id.to_string()).or_default().push((id, tx));
        }
        let reg = Registration {
            sockets: self.clone(),
            agent_id: agent_id.to_string(),
            id,
        };
        (reg, rx)
    }

    /// Sends `frame` to every open socket of `agent_id`; how many it reached.
    pub fn send(&self, agent_id: &str, frame: &Value) -> usize {
        let Ok(map) = self.by_agent.lock() else {
            return 0;
        };
        map.get(agent_id).map_or(0, |senders| {
            senders
                .iter()
                .filter(|(_, tx)| tx.send(frame.clone()).is_ok())
                .count()
        })
    }

    /// Sockets open for `agent_id`.
    pub fn count(&self, agent_id: &str) -> usize {
        self.by_agent
            .lock()
            .map(|m| m.get(agent_id).map_or(0, Vec::len))
            .unwrap_or(0)
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Ok(mut map) = self.sockets.by_agent.lock()
            && let Some(list) = map.get_mut(&self.agent_id)
        {
            list.retain(|(id, _)| *id != self.id);
            if list.is_empty() {
                map.remove(&self.agent_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    #[test]
    fn settled_frames_reach_the_agents_open_sockets_only() {
        let s = Arc::new(super::AgentSockets::default());
        let (a1, mut r1) = s.register("agt_a");
        let (_a2, mut r2) = s.register("agt_a");
        let (_b, mut rb) = s.register("agt_b");
        assert_eq!(s.send("agt_a", &json!({"type": "settled"})), 2);
        assert_eq!(r1.try_recv().unwrap()["type"], "settled");
        assert_eq!(r2.try_recv().unwrap()["type"], "settled");
        assert!(rb.try_recv().is_err());
        drop(a1);
        assert_eq!(s.count("agt_a"), 1);
        assert_eq!(s.send("agt_c", &json!({})), 0);
    }
}
