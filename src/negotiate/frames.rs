//! The wire protocol's frames (issue #14's contract): parsing client frames, building and
//! signing server frames. Committing frames (`offer`, `accept`) carry `sig`: standard base64
//! of an Ed25519 signature over the RFC 8785 (JCS) bytes of the frame without `sig`.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde_json::{Map, Value, json};

use super::terms::Terms;

/// The largest frame read, in bytes; a larger one gets `frame_too_large`.
pub const MAX_FRAME_BYTES: usize = 16 * 1024;

/// An `error` frame's reason. The codes are part of the protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameError {
    pub code: &'static str,
    pub message: String,
    pub negotiation_id: Option<String>,
}

impl FrameError {
    pub fn new(code: &'static str, message: impl Into<String>) -> FrameError {
        FrameError {
            code,
            message: message.into(),
            negotiation_id: None,
        }
    }

    pub fn on(mut self, negotiation_id: &str) -> FrameError {
        self.negotiation_id = Some(negotiation_id.to_string());
        self
    }

    pub fn frame(&self) -> Value {
        let mut f = json!({"type": "error", "code": self.code, "message": self.message});
        if let Some(id) = &self.negotiation_id {
            f["negotiation_id"] = json!(id);
        }
        f
    }
}

/// An item asked for at `open`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Item {
    pub variant_id: String,
    pub quantity: i64,
}

/// A client frame, parsed and checked for shape (not yet for meaning).
#[derive(Debug, Clone, PartialEq)]
pub enum ClientFrame {
    Open {
        request_id: String,
        items: Vec<Item>,
        max_rounds: Option<u32>,
        deadline_ms: Option<i64>,
    },
    Offer {
        negotiation_id: String,
        round: u32,
        terms: Terms,
        sig: String,
        /// The frame without `sig`: what the signature covers.
        signed: Value,
    },
    Accept {
        negotiation_id: String,
        round: u32,
        terms_hash: String,
        sig: String,
        signed: Value,
    },
    End {
        negotiation_id: String,
        reason: String,
    },
    Resume {
        negotiation_id: String,
    },
}

fn field<'a>(o: &'a Map<String, Value>, name: &str) -> Result<&'a Value, FrameError> {
    o.get(name)
        .ok_or_else(|| FrameError::new("bad_frame", format!("the frame needs `{name}`")))
}

fn string(o: &Map<String, Value>, name: &str) -> Result<String, FrameError> {
    match field(o, name)? {
        Value::String(s) if !s.trim().is_empty() && s.len() <= 200 => Ok(s.clone()),
        _ => Err(FrameError::new(
            "bad_frame",
            format!("`{name}` must be a non-empty string of at most 200 bytes"),
        )),
    }
}

fn round(o: &Map<String, Value>) -> Result<u32, FrameError> {
    field(o, "round")?
        .as_u64()
        .and_then(|r| u32::try_from(r).ok())
        .filter(|r| *r >= 1)
        .ok_or_else(|| FrameError::new("bad_frame", "`round` must be a positive integer"))
}

fn only(o: &Map<String, Value>, allowed: &[&str]) -> Result<(), FrameError> {
    match o.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(FrameError::new(
            "bad_frame",
            format!(
                "unknown field `{k}`; this frame takes: {}",
                allowed.join(", ")
            ),
        )),
        None => Ok(()),
    }
}

/// Parses one text frame. The error is the `error` frame's code and message.
pub fn parse(text: &str) -> Result<ClientFrame, FrameError> {
    if text.len() > MAX_FRAME_BYTES {
        return Err(FrameError::new(
            "frame_too_large",
            format!(
                "frames are at most {MAX_FRAME_BYTES} bytes; this one is {}",
                text.len()
            ),
        ));
    }
    let value: Value = serde_json::from_str(text)
        .map_err(|e| FrameError::new("bad_json", format!("the frame is not JSON: {e}")))?;
    let Value::Object(o) = value else {
        return Err(FrameError::new("bad_frame", "a frame is a JSON object"));
    };
    let kind = match o.get("type") {
        Some(Value::String(t)) => t.clone(),
        _ => {
            return Err(FrameError::new(
                "bad_frame",
                "the frame needs a string `type`",
            ));
        }
    };
    let with_id = |e: FrameError| match o.get("negotiation_id").and_then(Value::as_str) {
        Some(id) => e.on(id),
        None => e,
    };
    match kind.as_str() {
        "open" => {
            only(
                &o,
                &["type", "request_id", "items", "max_rounds", "deadline_ms"],
            )?;
            let items: Vec<Item> = serde_json::from_value(field(&o, "items")?.clone())
                .map_err(|e| FrameError::new("bad_frame", format!("`items`: {e}")))?;
            let max_rounds = match o.get("max_rounds") {
                None | Some(Value::Null) => None,
                Some(v) => Some(v.as_u64().and_then(|n| u32::try_from(n).ok()).ok_or_else(
                    || FrameError::new("bad_frame", "`max_rounds` must be a positive integer"),
                )?),
            };
            let deadline_ms = match o.get("deadline_ms") {
                None | Some(Value::Null) => None,
                Some(v) => Some(v.as_i64().ok_or_else(|| {
                    FrameError::new("bad_frame", "`deadline_ms` must be an integer")
                })?),
            };
            Ok(ClientFrame::Open {
                request_id: string(&o, "request_id")?,
                items,
                max_rounds,
                deadline_ms,
            })
        }
        "offer" => {
            only(&o, &["type", "negotiation_id", "round", "terms", "sig"]).map_err(with_id)?;
            let negotiation_id = string(&o, "negotiation_id")?;
            let terms: Terms =
                serde_json::from_value(field(&o, "terms")?.clone()).map_err(|e| {
                    FrameError::new("bad_frame", format!("`terms`: {e}")).on(&negotiation_id)
                })?;
            let sig = string(&o, "sig").map_err(|_| {
                FrameError::new("bad_signature", "an offer must carry `sig`").on(&negotiation_id)
            })?;
            let mut signed = o.clone();
            signed.remove("sig");
            Ok(ClientFrame::Offer {
                round: round(&o).map_err(|e| e.on(&negotiation_id))?,
                negotiation_id,
                terms,
                sig,
                signed: Value::Object(signed),
            })
        }
        "accept" => {
            only(
                &o,
                &["type", "negotiation_id", "round", "terms_hash", "sig"],
            )
            .map_err(with_id)?;
            let negotiation_id = string(&o, "negotiation_id")?;
            let sig = string(&o, "sig").map_err(|_| {
                FrameError::new("bad_signature", "an accept must carry `sig`").on(&negotiation_id)
            })?;
            let mut signed = o.clone();
            signed.remove("sig");
            Ok(ClientFrame::Accept {
                round: round(&o).map_err(|e| e.on(&negotiation_id))?,
                terms_hash: string(&o, "terms_hash").map_err(|e| e.on(&negotiation_id))?,
                negotiation_id,
                sig,
                signed: Value::Object(signed),
            })
        }
        "end" => {
            only(&o, &["type", "negotiation_id", "reason"]).map_err(with_id)?;
            Ok(ClientFrame::End {
                negotiation_id: string(&o, "negotiation_id")?,
                reason: o
                    .get("reason")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .chars()
                    .take(200)
                    .collect(),
            })
        }
        "resume" => {
            only(&o, &["type", "negotiation_id"]).map_err(with_id)?;
            Ok(ClientFrame::Resume {
                negotiation_id: string(&o, "negotiation_id")?,
            })
        }
        other => Err(with_id(FrameError::new(
            "unknown_type",
            format!(
                "unknown frame type {:?}; clients send open, offer, accept, end, resume",
                other.chars().take(40).collect::<String>()
            ),
        ))),
    }
}

/// Standard base64 of `key`'s Ed25519 signature over the JCS bytes of `unsigned`.
pub fn sign(key: &SigningKey, unsigned: &Value) -> String {
    STANDARD.encode(key.sign(crate::util::jcs(unsigned).as_bytes()).to_bytes())
}

/// `frame` (without `sig`) with its signature added.
pub fn signed(key: &SigningKey, mut frame: Value) -> Value {
    let sig = sign(key, &frame);
    frame["sig"] = Value::String(sig);
    frame
}

/// True when `sig` is `key`'s signature over the JCS bytes of `unsigned`.
pub fn verify(key: &VerifyingKey, unsigned: &Value, sig: &str) -> bool {
    let Ok(bytes) = STANDARD.decode(sig.trim()) else {
        return false;
    };
    let Ok(sig) = Signature::from_slice(&bytes) else {
        return false;
    };
    key.verify(crate::util::jcs(unsigned).as_bytes(), &sig)
        .is_ok()
}

/// The agent's committing frame as a verifier rebuilds it from a deal: an `accept` of the
/// deal's terms, or the `offer` of them.
pub fn agent_frame(negotiation_id: &str, agent_move: &str, round: u32, terms: &Terms) -> Value {
    if agent_move == "accept" {
        json!({"type": "accept", "negotiation_id": negotiation_id, "round": round,
               "terms_hash": terms.hash()})
    } else {
        json!({"type": "offer", "negotiation_id": negotiation_id, "round": round,
               "terms": terms.to_json()})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_parse_and_bad_ones_say_why() {
        assert_eq!(parse("{").unwrap_err().code, "bad_json");
        assert_eq!(parse("[]").unwrap_err().code, "bad_frame");
        assert_eq!(
            parse(r#"{"type":"haggle"}"#).unwrap_err().code,
            "unknown_type"
        );
        assert_eq!(
            parse(&"x".repeat(MAX_FRAME_BYTES + 1)).unwrap_err().code,
            "frame_too_large"
        );
        let e = parse(r#"{"type":"offer","negotiation_id":"n1","round":1,"terms":{"lines":[],"shipping":"s","currency":"USD"}}"#).unwrap_err();
        assert_eq!(
            (e.code, e.negotiation_id.as_deref()),
            ("bad_signature", Some("n1"))
        );
        let e = parse(r#"{"type":"offer","negotiation_id":"n1","round":0,"terms":{"lines":[],"shipping":"s","currency":"USD"},"sig":"x"}"#).unwrap_err();
        assert_eq!(e.code, "bad_frame");
        let e = parse(r#"{"type":"accept","negotiation_id":"n1","round":2,"terms_hash":"h","sig":"x","extra":1}"#).unwrap_err();
        assert!(e.message.contains("extra"));
        assert!(matches!(
            parse(
                r#"{"type":"open","request_id":"r","items":[{"variant_id":"v","quantity":1}],"max_rounds":10}"#
            ),
            Ok(ClientFrame::Open { .. })
        ));
    }

    #[test]
    fn signatures_cover_the_jcs_bytes_without_sig() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let f = signed(&key, json!({"type": "offer", "round": 2, "b": "ü"}));
        let mut unsigned = f.clone();
        let sig = unsigned.as_object_mut().unwrap().remove("sig").unwrap();
        assert!(verify(
            &key.verifying_key(),
            &unsigned,
            sig.as_str().unwrap()
        ));
        unsigned["round"] = json!(3);
        assert!(!verify(
            &key.verifying_key(),
            &unsigned,
            sig.as_str().unwrap()
        ));
    }
}
