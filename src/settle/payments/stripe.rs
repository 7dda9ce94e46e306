//! Cards through Stripe's PaymentIntents HTTP API: form-encoded POSTs with
//! `Authorization: Bearer <secret key>` and an `Idempotency-Key` per call, derived from the
//! deal, the attempt and the call (see [`Payment::idempotency_key`]).
//!
//! A charge is two calls: `POST /v1/payment_intents` (amount, currency, the card's stored
//! `payment_method`; nothing is charged yet) and `POST /v1/payment_intents/{id}/confirm`. The
//! intent's id is recorded for good (`settlements.payment_ref`, committed) between the two, so
//! no money can move before Concierge knows where to find it: a charge whose answer was lost (a
//! timeout, a 5xx after charging, the process killed) is undone by reading the intent
//! (`GET /v1/payment_intents/{id}`) and refunding it (`POST /v1/refunds` with `payment_intent`)
//! when it succeeded, or cancelling it (`POST /v1/payment_intents/{id}/cancel`) otherwise.
//! Without a recorded id no intent was ever confirmed; the create call is repeated with its
//! idempotency key only to cancel an intent it may have left behind.
//!
//! A decline is a 402 with `{"error": {"type": "card_error", "code", "decline_code",
//! "message"}}`.

use std::sync::OnceLock;
use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::{Value, json};

use super::{Charged, Payment, PaymentError, PaymentProvider, Reversal, StepTx};
use crate::config::StripeConfig;
use crate::util::Secret;

pub struct Stripe {
    base_url: String,
    key: Secret,
    timeout: Duration,
}

/// One client for every call (its connections are reused).
fn client() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(crate::http_client::client)
}

/// `application/x-www-form-urlencoded` bytes of `pairs`.
pub fn form_encode(pairs: &[(&str, String)]) -> String {
    fn enc(s: &str, out: &mut String) {
        for b in s.bytes() {
            match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'*' => {
                    out.push(b as char)
                }
                b' ' => out.push('+'),
                _ => out.push_str(&format!("%{b:02X}")),
            }
        }
    }
    let mut out = String::new();
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        enc(k, &mut out);
        out.push('=');
        enc(v, &mut out);
    }
    out
}

/// What one call came to.
enum Answer {
    Ok(Value),
    /// 402 `card_error`: the decline code (or error code) and message, and the intent's id when
    /// the error names it.
    Declined(String, String, Option<String>),
    /// Not sent at all (could not connect), or refused before running (4xx, 429).
    NotRun(&'static str, String),
    /// Sent, outcome unknown: a timeout, a 5xx, a connection lost mid-call.
    Unknown(&'static str, String),
}

impl Stripe {
    /// The provider as configured; None when no secret key is set (card payments off).
    pub fn from_config(c: &StripeConfig) -> Option<Stripe> {
        Some(Stripe {
            base_url: c.base_url.trim_end_matches('/').to_string(),
            key: c.key()?,
            timeout: Duration::from_millis(c.timeout_ms.max(1)),
        })
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        form: Option<(&[(&str, String)], &str)>,
    ) -> Answer {
        let url = format!("{}{path}", self.base_url);
        let mut req = client()
            .request(method, &url)
            .bearer_auth(self.key.expose())
            .timeout(self.timeout);
        if let Some((pairs, key)) = form {
            req = req
                .header("content-type", "application/x-www-form-urlencoded")
                .header("idempotency-key", key)
                .body(form_encode(pairs));
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) if e.is_timeout() => {
                return Answer::Unknown(
                    "payment_timeout",
                    format!(
                        "Stripe did not answer {path} within {} ms",
                        self.timeout.as_millis()
                    ),
                );
            }
            Err(e) if e.is_connect() => {
                return Answer::NotRun(
                    "payment_unavailable",
                    format!("Stripe could not be reached: {e}"),
                );
            }
            Err(e) => return Answer::Unknown("payment_error", format!("Stripe {path}: {e}")),
        };
        let status = resp.status().as_u16();
        let body: Value = match resp.json().await {
            Ok(v) => v,
            Err(e) if e.is_timeout() => {
                return Answer::Unknown(
                    "payment_timeout",
                    format!(
                        "Stripe's answer to {path} did not arrive within {} ms",
                        self.timeout.as_millis()
                    ),
                );
            }
            Err(e) if status < 300 => {
                return Answer::Unknown(
                    "payment_error",
                    format!("Stripe {path}: unreadable answer: {e}"),
                );
            }
            Err(_) => Value::Null,
        };
        let err = &body["error"];
        let message = err["message"].as_str().unwrap_or("no message").to_string();
        match status {
            200..=299 => Answer::Ok(body),
            402 if err["type"] == "card_error" => Answer::Declined(
                err["decline_code"]
                    .as_str()
                    .or(err["code"].as_str())
                    .unwrap_or("card_declined")
                    .to_string(),
                message,
                err["payment_intent"]["id"].as_str().map(str::to_string),
            ),
            500..=599 => Answer::Unknown(
                "payment_error",
                format!("Stripe answered {status} to {path}: {message}"),
            ),
            _ => Answer::NotRun(
                if status == 429 {
                    "payment_unavailable"
                } else {
                    "payment_refused"
                },
                format!("Stripe answered {status} to {path}: {message}"),
            ),
        }
    }

    fn create_form(p: &Payment) -> Vec<(&'static str, String)> {
        vec![
            ("amount", p.amount.to_string()),
            ("currency", p.currency.to_lowercase()),
            ("payment_method", p.method.id.clone()),
            ("description", format!("Concierge deal {}", p.deal_id)),
            ("metadata[deal_id]", p.deal_id.clone()),
            ("metadata[attempt]", p.attempt.to_string()),
            ("metadata[customer_id]", p.customer_id.clone()),
        ]
    }

    /// Creates the intent (or, with the same key again, gets the one created before).
    async fn create(&self, p: &Payment) -> Answer {
        let form = Self::create_form(p);
        self.call(
            reqwest::Method::POST,
            "/v1/payment_intents",
            Some((&form, &p.idempotency_key("create"))),
        )
        .await
    }
}

fn intent_id(v: &Value) -> Option<String> {
    v["id"].as_str().map(str::to_string)
}

impl PaymentProvider for Stripe {
    fn name(&self) -> &'static str {
        "stripe"
    }

    fn charge<'a>(
        &'a self,
        p: &'a Payment,
        step: &'a mut StepTx,
    ) -> BoxFuture<'a, Result<Charged, PaymentError>> {
        Box::pin(async move {
            let id = match self.create(p).await {
                Answer::Ok(v) => intent_id(&v).ok_or_else(|| PaymentError::Uncertain {
                    code: "payment_error",
                    message: "Stripe created a PaymentIntent without an id".into(),
                    reference: None,
                })?,
                Answer::Declined(code, message, reference) => {
                    return Err(PaymentError::Declined {
                        code,
                        message,
                        reference,
                    });
                }
                Answer::NotRun(code, message) => {
                    return Err(PaymentError::Refused {
                        code,
                        message,
                        reference: None,
                    });
                }
                Answer::Unknown(code, message) => {
                    return Err(PaymentError::Uncertain {
                        code,
                        message,
                        reference: None,
                    });
                }
            };
            let reference = Some(id.clone());
            // The intent's id is stored before the call that can move money, so a settlement
            // interrupted from here on always finds the payment to undo.
            if let Err(message) = step.note_reference(&id).await {
                return Err(PaymentError::Refused {
                    code: "payment_not_recorded",
                    message,
                    reference,
                });
            }
            let path = format!("/v1/payment_intents/{id}/confirm");
            match self
                .call(reqwest::Method::POST, &path, Some((&[], &p.idempotency_key("confirm"))))
                .await
            {
                Answer::Ok(v) => match v["status"].as_str().unwrap_or_default() {
                    "succeeded" | "processing" | "requires_capture" => Ok(Charged {
                        reference: id.clone(),
                        effects: json!([{"provider": "stripe", "payment_intent": id,
                                         "status": v["status"], "amount": p.amount,
                                         "currency": p.currency}]),
                    }),
                    "requires_action" => Err(PaymentError::Declined {
                        code: "authentication_required".into(),
                        message: "the card needs the customer's authentication (3-D Secure), which an agent cannot give".into(),
                        reference,
                    }),
                    other => Err(PaymentError::Declined {
                        code: "card_declined".into(),
                        message: format!("Stripe left the PaymentIntent {other}"),
                        reference,
                    }),
                },
                Answer::Declined(code, message, _) => {
                    Err(PaymentError::Declined { code, message, reference })
                }
                Answer::NotRun(code, message) => Err(PaymentError::Refused { code, message, reference }),
                Answer::Unknown(code, message) => {
                    Err(PaymentError::Uncertain { code, message, reference })
                }
            }
        })
    }

    fn reverse<'a>(
        &'a self,
        p: &'a Payment,
        reference: Option<&'a str>,
        _step: &'a mut StepTx,
    ) -> BoxFuture<'a, Result<Reversal, String>> {
        Box::pin(async move {
            let id = match reference {
                Some(id) => id.to_string(),
                // No handle was recorded: `charge` stores the intent's id before it confirms,
                // so this attempt never confirmed one and no money can have moved, whatever
                // Stripe answers now. An intent the lost create call may have made is
                // cancelled so nothing is left behind; when Stripe cannot say (an error, a
                // refusal), there is nothing to take back either.
                None => match self.create(p).await {
                    Answer::Ok(v) => match intent_id(&v) {
                        Some(id) => id,
                        None => return Ok(Reversal::Nothing),
                    },
                    Answer::Declined(_, _, Some(id)) => id,
                    Answer::Declined(_, m, None) | Answer::NotRun(_, m) | Answer::Unknown(_, m) => {
                        tracing::info!(deal = %p.deal_id, answer = %m,
                            "settlement: no payment was confirmed, so none is undone");
                        return Ok(Reversal::Nothing);
                    }
                },
            };
            let intent = match self
                .call(
                    reqwest::Method::GET,
                    &format!("/v1/payment_intents/{id}"),
                    None,
                )
                .await
            {
                Answer::Ok(v) => v,
                Answer::Declined(_, m, _) | Answer::NotRun(_, m) | Answer::Unknown(_, m) => {
                    return Err(m);
                }
            };
            match intent["status"].as_str().unwrap_or_default() {
                "canceled" => Ok(Reversal::Voided),
                "processing" => Err(format!(
                    "PaymentIntent {id} is still processing; it is refunded once it settles"
                )),
                "succeeded" => {
                    let form = [("payment_intent", id.clone())];
                    match self
                        .call(
                            reqwest::Method::POST,
                            "/v1/refunds",
                            Some((&form, &p.idempotency_key("refund"))),
                        )
                        .await
                    {
                        Answer::Ok(_) => Ok(Reversal::Refunded),
                        Answer::Declined(_, m, _)
                        | Answer::NotRun(_, m)
                        | Answer::Unknown(_, m) => Err(m),
                    }
                }
                _ => {
                    let path = format!("/v1/payment_intents/{id}/cancel");
                    match self
                        .call(
                            reqwest::Method::POST,
                            &path,
                            Some((&[], &p.idempotency_key("cancel"))),
                        )
                        .await
                    {
                        Answer::Ok(_) => Ok(Reversal::Voided),
                        Answer::Declined(_, m, _)
                        | Answer::NotRun(_, m)
                        | Answer::Unknown(_, m) => Err(m),
                    }
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn forms_are_url_encoded() {
        let f = super::form_encode(&[
            ("amount", "1999".into()),
            ("metadata[deal_id]", "deal_a b&c".into()),
        ]);
        assert_eq!(f, "amount=1999&metadata%5Bdeal_id%5D=deal_a+b%26c");
    }
}
