//! The channels a conversation can be on, typed. Stored (on conversations, messages and
//! deliveries) as the strings `api`, `webchat`, `email`, `telegram`, `a2a` and
//! `marketplace:<name>`; read back with [`Channel::parse`], so code decides by variant rather than
//! by comparing strings.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Channel {
    /// `POST /api/v1/messages`: the reply is the HTTP response.
    Api,
    /// The web chat widget: the reply reaches the socket as a live event.
    Webchat,
    Email,
    Telegram,
    /// Consumer agents' text conversations (A2A `SendMessage`): the reply is the RPC result.
    A2a,
    /// A signed-webhook marketplace, by its configured name.
    Marketplace(String),
}

impl Channel {
    /// Reads a stored channel string; `Err` names what is not a channel.
    pub fn parse(s: &str) -> Result<Channel, String> {
        Ok(match s {
            "api" => Channel::Api,
            "webchat" => Channel::Webchat,
            "email" => Channel::Email,
            "telegram" => Channel::Telegram,
            "a2a" => Channel::A2a,
            other => match other.strip_prefix("marketplace:") {
                Some(name) if !name.is_empty() => Channel::Marketplace(name.to_string()),
                _ => return Err(format!("{other:?} is not a channel")),
            },
        })
    }

    /// Whether replies on this channel leave through the outbox (a delivery row and its job).
    /// The others answer in-band: the API and A2A in their response, web chat over its socket.
    pub fn delivers(&self) -> bool {
        matches!(
            self,
            Channel::Email | Channel::Telegram | Channel::Marketplace(_)
        )
    }

    /// Whether the request that brought the message waits for its answer (the API, A2A) or
    /// runs it at once (web chat), rather than leaving it to the job worker.
    pub fn answers_inline(&self) -> bool {
        matches!(self, Channel::Api | Channel::A2a | Channel::Webchat)
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Channel::Api => f.write_str("api"),
            Channel::Webchat => f.write_str("webchat"),
            Channel::Email => f.write_str("email"),
            Channel::Telegram => f.write_str("telegram"),
            Channel::A2a => f.write_str("a2a"),
            Channel::Marketplace(name) => write!(f, "marketplace:{name}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Channel;

    #[test]
    fn channels_round_trip_through_their_stored_strings() {
        for s in [
            "api",
            "webchat",
            "email",
            "telegram",
            "a2a",
            "marketplace:ebay",
        ] {
            assert_eq!(Channel::parse(s).unwrap().to_string(), s);
        }
        assert!(Channel::parse("marketplace:").is_err());
        assert!(Channel::parse("fax").unwrap_err().contains("fax"));
        assert!(Channel::parse("marketplace:ebay").unwrap().delivers());
        assert!(!Channel::Webchat.delivers());
        assert!(Channel::A2a.answers_inline() && !Channel::Email.answers_inline());
    }
}
