//! Agent-to-agent negotiation (issue #14): the brand's side of stacked alternating offers with
//! shoppers' and buyers' agents — the terms and their ranges, the brand's strategy
//! ([`strategy`]), the hard limits every offer and deal is held to ([`limits`]), the frames of
//! the protocol ([`frames`]), and the persisted state machine (`open → offering → agreed |
//! ended | expired`, [`Negotiation`], stored by [`store`]). The WebSocket face that drives it
//! is `gateway::negotiation`.
//!
//! Rounds count moves: the agent's first offer is round 1, the brand's answer round 2, and so
//! on; the agent moves on odd rounds. A negotiation's state is its transcript: loading one
//! replays its stored moves, and the deadline is wall-clock, so a restart changes nothing.

pub mod config;
pub mod frames;
pub mod limits;
pub mod metrics;
pub mod risk;
pub mod sockets;
pub mod store;
pub mod strategy;
pub mod terms;

use serde_json::{Value, json};

pub use config::NegotiationConfig;
pub use terms::{Line, LineSetup, Setup, Terms};

use crate::commerce::Minor;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Open,
    Offering,
    Agreed,
    Ended,
    Expired,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Open => "open",
            Status::Offering => "offering",
            Status::Agreed => "agreed",
            Status::Ended => "ended",
            Status::Expired => "expired",
        }
    }

    pub fn parse(s: &str) -> Status {
        match s {
            "offering" => Status::Offering,
            "agreed" => Status::Agreed,
            "ended" => Status::Ended,
            "expired" => Status::Expired,
            _ => Status::Open,
        }
    }

    pub fn is_live(self) -> bool {
        matches!(self, Status::Open | Status::Offering)
    }
}

/// One stored move of the transcript.
#[derive(Debug, Clone, PartialEq)]
pub struct Move {
    pub round: u32,
    /// "agent" or "brand".
    pub side: &'static str,
    /// "offer", "accept" or "end".
    pub kind: &'static str,
    pub terms: Option<Terms>,
    pub total: Option<Minor>,
    /// The frame as received (agent) or sent (brand).
    pub frame: Value,
    pub sig: Option<String>,
    pub at: i64,
}

impl Move {
    pub fn to_json(&self) -> Value {
        json!({
            "round": self.round, "side": self.side, "kind": self.kind,
            "terms": self.terms.as_ref().map(Terms::to_json), "total": self.total,
            "sig": self.sig, "at": self.at,
        })
    }
}

/// A negotiation: who, what was fixed at open, and the transcript.
#[derive(Debug, Clone)]
pub struct Negotiation {
    pub id: String,
    pub agent_id: String,
    pub key_id: String,
    pub customer_id: String,
    pub token_id: String,
    pub request_id: String,
    pub setup: Setup,
    pub moves: Vec<Move>,
    /// Why it ended (the `ended` reason), when it did.
    pub end_reason: Option<String>,
    pub deal_id: Option<String>,
    /// Stored status; [`Negotiation::status`] also reads the clock.
    pub stored_status: Status,
}

impl Negotiation {
    /// The round of the last move (0 before the agent's first offer).
    pub fn round(&self) -> u32 {
        self.moves.last().map(|m| m.round).unwrap_or(0)
    }

    /// The state the transcript and the clock give.
    pub fn status(&self, now: i64) -> Status {
        let by_moves = match self.moves.last() {
            None => Status::Open,
            Some(m) if m.kind == "accept" => Status::Agreed,
            Some(m) if m.kind == "end" => Status::Ended,
            Some(_) => Status::Offering,
        };
        match (by_moves, self.stored_status) {
            (s, Status::Expired) if s.is_live() => Status::Expired,
            (s, _) if s.is_live() && now >= self.setup.deadline_at => Status::Expired,
            (s, _) => s,
        }
    }

    /// Whose move it is: the agent moves on odd rounds.
    pub fn agent_to_move(&self) -> bool {
        self.round().is_multiple_of(2)
    }

    pub fn last_offer(&self, side: &str) -> Option<&Move> {
        self.moves
            .iter()
            .rev()
            .find(|m| m.side == side && m.kind == "offer")
    }

    /// The brand's offer the agent may accept now: the latest move, when it is the brand's
    /// offer.
    pub fn open_brand_offer(&self) -> Option<&Move> {
        self.moves
            .last()
            .filter(|m| m.side == "brand" && m.kind == "offer")
    }

    /// The `ended` reason for a status that is over.
    pub fn reason(&self, now: i64) -> Option<String> {
        match self.status(now) {
            Status::Expired => Some("deadline".into()),
            Status::Ended => self.end_reason.clone().or_else(|| Some("ended".into())),
            _ => None,
        }
    }

    /// The `opened` frame.
    pub fn opened_frame(&self) -> Value {
        json!({
            "type": "opened",
            "request_id": self.request_id,
            "negotiation_id": self.id,
            "issues": self.setup.issues(),
            "list_terms": self.setup.list_terms().to_json(),
            "max_rounds": self.setup.max_rounds,
            "deadline_at": self.setup.deadline_at,
        })
    }

    /// The `state` frame (the answer to `resume`).
    pub fn state_frame(&self, now: i64, deal: Option<&Value>) -> Value {
        let offer = |side: &str| {
            self.last_offer(side).map(|m| {
                json!({"round": m.round, "terms": m.terms.as_ref().map(Terms::to_json),
                       "sig": m.sig})
            })
        };
        json!({
            "type": "state",
            "negotiation_id": self.id,
            "status": self.status(now).as_str(),
            "round": self.round(),
            "next_round": self.round() + 1,
            "your_turn": self.status(now).is_live() && self.agent_to_move(),
            "max_rounds": self.setup.max_rounds,
            "deadline_at": self.setup.deadline_at,
            "last_agent_offer": offer("agent"),
            "last_brand_offer": offer("brand"),
            "reason": self.reason(now),
            "deal": deal,
        })
    }

    /// The transcript and state, for `GET /agent/v1/negotiations/{id}` and the staff inbox.
    pub fn transcript(&self, now: i64) -> Value {
        json!({
            "negotiation_id": self.id,
            "request_id": self.request_id,
            "agent_id": self.agent_id,
            "agent_key_id": self.key_id,
            "customer_id": self.customer_id,
            "status": self.status(now).as_str(),
            "reason": self.reason(now),
            "round": self.round(),
            "max_rounds": self.setup.max_rounds,
            "opened_at": self.setup.opened_at,
            "deadline_at": self.setup.deadline_at,
            "issues": self.setup.issues(),
            "list_terms": self.setup.list_terms().to_json(),
            "deal_id": self.deal_id,
            "moves": self.moves.iter().map(Move::to_json).collect::<Vec<_>>(),
        })
    }
}

/// A stored deal: the `deal` object and both signatures.
#[derive(Debug, Clone, PartialEq)]
pub struct Deal {
    pub deal: Value,
    pub deal_hash: String,
    pub brand_sig: String,
    pub agent_sig: String,
    pub audit_seq: i64,
}

impl Deal {
    pub fn id(&self) -> &str {
        self.deal["deal_id"].as_str().unwrap_or_default()
    }

    /// The `deal` frame.
    pub fn frame(&self) -> Value {
        json!({
            "type": "deal",
            "negotiation_id": self.deal["negotiation_id"],
            "deal": self.deal,
            "deal_hash": self.deal_hash,
            "brand_sig": self.brand_sig,
            "agent_sig": self.agent_sig,
        })
    }
}
