//! The negotiation face (issue #14): `GET /agent/v1/negotiations/ws`, one WebSocket carrying
//! any number of negotiations between a consumer agent and the brand, plus the signed reads
//! `GET /agent/v1/negotiations/{id}` and `GET /agent/v1/deals/{id}`.
//!
//! The upgrade is authenticated like every gateway request (RFC 9421 signature over `@method`
//! and `@target-uri`, and a capability token allowing `negotiate`); the agent's key that signed
//! it must sign every committing frame (`offer`, `accept`). Each move is checked (signature,
//! turn, round, ranges), answered by the brand's strategy under the hard limits
//! (`negotiate::strategy::decide`), and stored with the answer before the answer is sent.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::ws::{Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use ed25519_dalek::{SigningKey, VerifyingKey};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};

use super::{AgentRef, Caller, GatewayError, Grant, SignedRequest, calls, identity, tokens};
use crate::commerce::Minor;
use crate::negotiate::frames::{self, ClientFrame, FrameError, Item};
use crate::negotiate::store::{self as nstore, Step, StepError};
use crate::negotiate::strategy::{self, Aspiration, Decision, Moment};
use crate::negotiate::{
    Deal, LineSetup, Move, Negotiation, NegotiationConfig, Setup, Status, Terms, limits, metrics,
};
use crate::state::AppState;
use crate::util::now_ms;

/// The operation a capability token must allow.
pub const OPERATION: &str = "negotiate";
/// The agent card extension.
pub const EXTENSION: &str = "urn:concierge:extension:negotiation:v1";
pub const WS_PATH: &str = "/agent/v1/negotiations/ws";

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(WS_PATH, get(upgrade))
        .route("/agent/v1/negotiations/{id}", get(get_negotiation))
        .route("/agent/v1/deals/{id}", get(get_deal))
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (status, axum::Json(calls::error_body(code, message))).into_response()
}

fn gateway_error(e: &GatewayError) -> Response {
    let (status, code) = calls::http_error(e);
    error(status, code, &calls::error_message(e))
}

/// The signed caller of a request without a body, or the refusal.
async fn signed_caller(
    state: &AppState,
    parts: &axum::http::request::Parts,
) -> Result<Caller, Response> {
    let req = SignedRequest {
        method: &parts.method,
        uri: &parts.uri,
        headers: &parts.headers,
        body: &[],
    };
    let caller = super::authenticate(state, &req)
        .await
        .map_err(|e| gateway_error(&e))?;
    if caller.agent.is_none() {
        return Err(error(
            StatusCode::UNAUTHORIZED,
            "signature_required",
            "sign the request (RFC 9421) with your registered agent key",
        ));
    }
    Ok(caller)
}

async fn upgrade(State(state): State<AppState>, req: Request) -> Response {
    let (mut parts, _body) = req.into_parts();
    let caller = match signed_caller(&state, &parts).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let (Some(agent), Some(grant)) = (caller.agent, caller.grant) else {
        return error(
            StatusCode::UNAUTHORIZED,
            "token_required",
            "negotiating needs the customer's capability token allowing `negotiate`, as \
             `Authorization: Bearer <token>`",
        );
    };
    if !grant.ops.iter().any(|o| o == OPERATION) {
        return error(
            StatusCode::FORBIDDEN,
            "operation_not_allowed",
            &format!(
                "this token does not allow negotiate; it allows: {}",
                grant.ops.join(", ")
            ),
        );
    }
    let key = match state.store.agent_key(&agent.key_id).await {
        Ok(Some(k)) => match identity::parse_public_key(&k.public_key) {
            Ok(key) => key,
            Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, "internal", &e),
        },
        _ => {
            return error(
                StatusCode::UNAUTHORIZED,
                "unknown_key",
                "the signing key is not registered",
            );
        }
    };
    let service = match super::service_key(&state) {
        Ok(k) => k.clone(),
        Err(e) => return gateway_error(&e),
    };
    let ws = match WebSocketUpgrade::from_request_parts(&mut parts, &state).await {
        Ok(ws) => ws,
        Err(rejection) => return rejection.into_response(),
    };
    let config = NegotiationConfig::for_brand(&state.config.brand.dir);
    let session = Session {
        state,
        agent,
        grant,
        key,
        service,
        config,
        cache: HashMap::new(),
        deadlines: BTreeSet::new(),
    };
    // Frames over MAX_FRAME_BYTES are read and answered `frame_too_large`; far larger ones
    // close the socket.
    ws.max_message_size(frames::MAX_FRAME_BYTES * 64)
        .on_upgrade(move |socket| session.run(socket))
}

/// One socket: the agent, its token and key, and the negotiations it touched.
struct Session {
    state: AppState,
    agent: AgentRef,
    grant: Grant,
    key: VerifyingKey,
    service: SigningKey,
    config: Arc<NegotiationConfig>,
    cache: HashMap<String, Negotiation>,
    /// (deadline, negotiation id) of the live negotiations on this socket.
    deadlines: BTreeSet<(i64, String)>,
}

type Reply = Result<Vec<Value>, FrameError>;

impl Session {
    async fn run(mut self, socket: WebSocket) {
        let (mut sink, mut stream) = socket.split();
        let mut halts = self.state.risk.subscribe();
        // News about this agent's deals (a settlement's outcome) arrives here while it is open.
        let (_registration, mut news) = self.state.agent_sockets.register(&self.agent.id);
        loop {
            let next_deadline = self.deadlines.iter().next().map(|(at, _)| *at);
            let sleep = async {
                match next_deadline {
                    Some(at) => {
                        let wait = (at - now_ms()).max(0) as u64;
                        tokio::time::sleep(std::time::Duration::from_millis(wait)).await
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            let out: Vec<Value> = tokio::select! {
                frame = stream.next() => {
                    let text = match frame {
                        Some(Ok(WsMessage::Text(t))) => t.to_string(),
                        Some(Ok(WsMessage::Binary(_))) => {
                            let f = FrameError::new("bad_frame", "frames are JSON text, not binary").frame();
                            if sink.send(WsMessage::Text(f.to_string().into())).await.is_err() { break; }
                            continue;
                        }
                        Some(Ok(WsMessage::Close(_))) | None | Some(Err(_)) => break,
                        Some(Ok(_)) => continue,
                    };
                    let started = Instant::now();
                    let (kind, reply) = self.handle(&text).await;
                    metrics::move_time(kind, started.elapsed().as_secs_f64());
                    match reply {
                        Ok(frames) => frames,
                        Err(e) => {
                            metrics::error(e.code);
                            vec![e.frame()]
                        }
                    }
                }
                () = sleep => self.expire_due().await,
                halt = halts.recv() => match halt {
                    Ok(crate::risk::Halt(scope)) if !scope.covers(&self.agent.id) => continue,
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        self.end_for_circuit().await
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => continue,
                },
                Some(frame) = news.recv() => vec![frame],
            };
            for f in out {
                if sink
                    .send(WsMessage::Text(f.to_string().into()))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    }

    /// Ends every negotiation on this socket whose deadline has passed.
    async fn expire_due(&mut self) -> Vec<Value> {
        let now = now_ms();
        let due: Vec<(i64, String)> = self
            .deadlines
            .iter()
            .take_while(|(at, _)| *at <= now)
            .cloned()
            .collect();
        let mut out = Vec::new();
        for entry in due {
            self.deadlines.remove(&entry);
            let id = entry.1;
            self.state.risk.release(&id);
            match nstore::expire(&self.state.store, &id, now).await {
                Ok(true) => {
                    let rounds = self.cache.get(&id).map(|n| n.round()).unwrap_or(0);
                    metrics::ended("deadline", rounds);
                    out.push(json!({"type": "ended", "negotiation_id": id, "reason": "deadline"}));
                }
                Ok(false) => {}
                Err(e) => tracing::error!(error = %e, negotiation = %id, "could not expire"),
            }
            if let Some(n) = self.cache.get_mut(&id)
                && n.stored_status.is_live()
                && n.status(now) == Status::Expired
            {
                n.stored_status = Status::Expired;
            }
        }
        out
    }

    async fn handle(&mut self, text: &str) -> (&'static str, Reply) {
        let frame = match frames::parse(text) {
            Ok(f) => f,
            Err(e) => return ("bad", Err(e)),
        };
        match frame {
            ClientFrame::Open {
                request_id,
                items,
                max_rounds,
                deadline_ms,
            } => (
                "open",
                self.open(&request_id, &items, max_rounds, deadline_ms)
                    .await,
            ),
            ClientFrame::Offer {
                negotiation_id,
                round,
                terms,
                sig,
                signed,
            } => {
                let r = self.offer(&negotiation_id, round, terms, sig, signed).await;
                ("offer", r.map_err(|e| e.on(&negotiation_id)))
            }
            ClientFrame::Accept {
                negotiation_id,
                round,
                terms_hash,
                sig,
                signed,
            } => {
                let r = self
                    .accept(&negotiation_id, round, &terms_hash, sig, signed)
                    .await;
                ("accept", r.map_err(|e| e.on(&negotiation_id)))
            }
            ClientFrame::End {
                negotiation_id,
                reason,
            } => {
                let r = self.end(&negotiation_id, &reason).await;
                ("end", r.map_err(|e| e.on(&negotiation_id)))
            }
            ClientFrame::Resume { negotiation_id } => {
                let r = self.resume(&negotiation_id).await;
                ("resume", r.map_err(|e| e.on(&negotiation_id)))
            }
        }
    }

    fn internal(e: impl std::fmt::Display) -> FrameError {
        tracing::error!(error = %e, "negotiation: internal error");
        FrameError::new("internal", "our fault: nothing was changed; try again")
    }

    // ---- open ----

    async fn open(
        &mut self,
        request_id: &str,
        items: &[Item],
        max_rounds: Option<u32>,
        deadline_ms: Option<i64>,
    ) -> Reply {
        let store = &self.state.store;
        if let Some(n) = nstore::find_by_request(store, &self.agent.id, request_id)
            .await
            .map_err(Self::internal)?
        {
            // The same open again (a retry after a lost answer): the same negotiation.
            let frame = n.opened_frame();
            self.track(n);
            return Ok(vec![frame]);
        }
        let c = self.config.clone();
        if !c.enabled {
            return Err(FrameError::new(
                "not_negotiable",
                "this store does not negotiate",
            ));
        }
        let now = now_ms();
        let live = self
            .cache
            .values()
            .filter(|n| n.status(now).is_live())
            .count();
        if live >= c.max_open_per_socket {
            return Err(FrameError::new(
                "too_many_negotiations",
                format!(
                    "a socket may have {} negotiations open at once",
                    c.max_open_per_socket
                ),
            ));
        }
        if self.grant.expires_at <= now {
            return Err(FrameError::new(
                "token_expired",
                "the capability token has expired",
            ));
        }
        let max_rounds = match max_rounds {
            None => c.max_rounds,
            Some(r) if (2..=crate::negotiate::config::MAX_ROUNDS_CAP).contains(&r) => {
                r.min(c.max_rounds)
            }
            Some(r) => {
                return Err(FrameError::new(
                    "bad_frame",
                    format!(
                        "max_rounds {r}: it must be 2..={}",
                        crate::negotiate::config::MAX_ROUNDS_CAP
                    ),
                ));
            }
        };
        let deadline_ms = match deadline_ms {
            None => c.deadline_ms,
            Some(d) if (100..=crate::negotiate::config::MAX_DEADLINE_MS).contains(&d) => {
                d.min(c.deadline_ms)
            }
            Some(d) => {
                return Err(FrameError::new(
                    "bad_frame",
                    format!(
                        "deadline_ms {d}: it must be 100..={}",
                        crate::negotiate::config::MAX_DEADLINE_MS
                    ),
                ));
            }
        };
        if items.is_empty() || items.len() > c.max_lines {
            return Err(FrameError::new(
                "bad_frame",
                format!("items: 1 to {} lines", c.max_lines),
            ));
        }
        let mut lines: Vec<LineSetup> = Vec::new();
        for (i, item) in items.iter().enumerate() {
            if items[..i].iter().any(|p| p.variant_id == item.variant_id) {
                return Err(FrameError::new(
                    "bad_frame",
                    format!("items[{i}]: variant {:?} twice", item.variant_id),
                ));
            }
            lines.push(self.line_setup(i, item).await?);
        }
        // The token's categories (and every other check of the token and its attenuations).
        let categories: Vec<String> = lines.iter().map(|l| l.category.to_lowercase()).collect();
        if let Some(token) = &self.grant.token {
            let facts = tokens::CallFacts {
                operation: OPERATION,
                customer_id: &self.grant.customer_id,
                spend: 0,
                categories: &categories,
                now,
            };
            if let Err(failed) = tokens::authorize(token, &facts) {
                return Err(FrameError::new(
                    "category_not_allowed",
                    format!(
                        "the capability token does not allow negotiating for products in {} ({failed})",
                        categories.join(", ")
                    ),
                ));
            }
        }
        let remaining = self.remaining().await?;
        let id = format!("neg_{}", crate::util::random_token(16));
        let setup = Setup {
            currency: c.currency.clone(),
            lines,
            shipping: c.shipping.clone(),
            breaks: c
                .quantity_breaks
                .iter()
                .map(|b| (b.min_quantity, b.discount))
                .collect(),
            exponent: c.strategy.exponent,
            target: c.strategy.target,
            accept_near_deadline: c.strategy.accept_near_deadline,
            remaining_limit: remaining,
            token_categories: self.grant.categories.clone(),
            max_rounds,
            opened_at: now,
            deadline_at: now + deadline_ms,
            deal_valid_ms: c.deal_valid_secs * 1000,
        };
        if let Some(rem) = remaining {
            let mut floors = setup.priced(&setup.list_terms(), |s, _| s.floor);
            if let Some(o) = setup.shipping.iter().min_by_key(|o| o.price) {
                floors.shipping = o.id.clone();
            }
            let least = setup.total(&floors);
            if least > rem {
                return Err(FrameError::new(
                    "spending_limit",
                    format!(
                        "the token has {rem} (minor units) left to spend; these items cost at least {least}"
                    ),
                ));
            }
        }
        let n = Negotiation {
            id: id.clone(),
            agent_id: self.agent.id.clone(),
            key_id: self.agent.key_id.clone(),
            customer_id: self.grant.customer_id.clone(),
            token_id: self.grant.token_id.clone(),
            request_id: request_id.to_string(),
            setup,
            moves: Vec::new(),
            end_reason: None,
            deal_id: None,
            stored_status: Status::Open,
        };
        // Exposure limits and circuit breakers: counted now, atomically with the check.
        let list_value = n.setup.total(&n.setup.list_terms());
        if let Err(r) = self.state.risk.admit_open(
            &n.id,
            &n.agent_id,
            &n.customer_id,
            list_value,
            n.setup.deadline_at,
            now,
        ) {
            return Err(FrameError::new(r.code, r.message));
        }
        let inserted = nstore::insert(store, &n).await;
        if inserted.is_err() {
            self.state.risk.release(&n.id);
        }
        match inserted {
            Ok(()) => {}
            Err(e) if e.is_unique_violation() => {
                // The same request id raced on another socket: answer with the stored one
                // (once its write is visible to reads).
                store.settle_writes().await;
                let n = nstore::find_by_request(store, &self.agent.id, request_id)
                    .await
                    .map_err(Self::internal)?
                    .ok_or_else(|| Self::internal("a negotiation vanished"))?;
                let frame = n.opened_frame();
                self.track(n);
                return Ok(vec![frame]);
            }
            Err(e) => return Err(Self::internal(e)),
        }
        metrics::opened(&n.setup);
        let frame = n.opened_frame();
        self.track(n);
        Ok(vec![frame])
    }

    /// One line of an `open`: the variant, its floor, cost and stock bound.
    async fn line_setup(&self, i: usize, item: &Item) -> Result<LineSetup, FrameError> {
        let store = &self.state.store;
        let unknown = || {
            FrameError::new(
                "terms_out_of_range",
                format!(
                    "items[{i}]: no variant {:?} in the catalogue",
                    item.variant_id
                ),
            )
        };
        let product_id = store
            .variant_product(&item.variant_id)
            .await
            .map_err(Self::internal)?
            .ok_or_else(unknown)?;
        let product = store
            .get_product(&product_id)
            .await
            .map_err(Self::internal)?
            .ok_or_else(unknown)?;
        let variant = product
            .variants
            .iter()
            .find(|v| v.id == item.variant_id)
            .ok_or_else(unknown)?;
        let category = product
            .product_type
            .clone()
            .unwrap_or_else(|| product.name.clone());
        let rule = self.config.rule(&product_id, Some(&category));
        if !rule.negotiable || variant.price <= 0 {
            return Err(FrameError::new(
                "not_negotiable",
                format!("items[{i}]: {} is not open to negotiation", product.name),
            ));
        }
        let max = if !variant.available {
            0
        } else {
            variant
                .stock
                .unwrap_or(self.config.max_quantity)
                .min(self.config.max_quantity)
        };
        if max < 1 {
            return Err(FrameError::new(
                "out_of_stock",
                format!("items[{i}]: {} is out of stock", product.name),
            ));
        }
        if item.quantity < 1 || item.quantity > max {
            return Err(FrameError::new(
                "terms_out_of_range",
                format!(
                    "items[{i}]: quantity {} is outside 1..={max}",
                    item.quantity
                ),
            ));
        }
        let list = variant.price;
        let floor = ((list as f64 * rule.floor_share).ceil() as Minor)
            .max(rule.floor_amount)
            .min(list)
            .max(1);
        Ok(LineSetup {
            variant_id: variant.id.clone(),
            product_id: product_id.clone(),
            name: product.name.clone(),
            category,
            list_price: list,
            floor,
            cost: (list as f64 * rule.cost_ratio).round() as Minor,
            min_quantity: 1,
            max_quantity: max,
            quantity: item.quantity,
        })
    }

    /// What the token has left to spend now (None = no limit).
    async fn remaining(&self) -> Result<Option<Minor>, FrameError> {
        match self.grant.spend_limit {
            None => Ok(None),
            Some(limit) => {
                let spent = self
                    .state
                    .store
                    .token_spent(&self.grant.token_id)
                    .await
                    .map_err(Self::internal)?;
                Ok(Some((limit - spent).max(0)))
            }
        }
    }

    fn track(&mut self, n: Negotiation) {
        if n.status(now_ms()).is_live() || n.stored_status.is_live() {
            self.deadlines.insert((n.setup.deadline_at, n.id.clone()));
        }
        self.cache.insert(n.id.clone(), n);
    }

    /// The negotiation, if it is this agent's (cached, else from the store).
    async fn fetch(&mut self, id: &str, fresh: bool) -> Result<&mut Negotiation, FrameError> {
        if fresh || !self.cache.contains_key(id) {
            let n = nstore::load(&self.state.store, id)
                .await
                .map_err(Self::internal)?
                .ok_or_else(|| FrameError::new("unknown_negotiation", "no such negotiation"))?;
            if n.agent_id != self.agent.id {
                return Err(FrameError::new(
                    "not_your_negotiation",
                    "this negotiation belongs to another agent",
                ));
            }
            self.track(n);
        }
        let n = self
            .cache
            .get_mut(id)
            .ok_or_else(|| Self::internal("cache"))?;
        if n.token_id != self.grant.token_id {
            return Err(FrameError::new(
                "token_mismatch",
                "this negotiation was opened with another capability token; reconnect with it",
            ));
        }
        Ok(n)
    }

    /// The checks every move makes: the negotiation is live, it is the agent's turn, and the
    /// round is the next one.
    fn check_move(n: &Negotiation, round: u32, now: i64) -> Result<(), FrameError> {
        let status = n.status(now);
        if !status.is_live() {
            return Err(FrameError::new(
                "negotiation_closed",
                format!(
                    "the negotiation is {}{}",
                    status.as_str(),
                    n.reason(now).map(|r| format!(" ({r})")).unwrap_or_default()
                ),
            ));
        }
        let expected = n.round() + 1;
        if round < expected {
            return Err(FrameError::new(
                "stale_round",
                format!("round {round} is taken; the next move is round {expected}"),
            ));
        }
        if !n.agent_to_move() || round > expected {
            return Err(FrameError::new(
                "out_of_turn",
                format!(
                    "round {round} is not yours to play: the next move is round {expected}, by {}",
                    if n.agent_to_move() {
                        "you"
                    } else {
                        "the brand"
                    }
                ),
            ));
        }
        if round > n.setup.max_rounds {
            return Err(FrameError::new(
                "out_of_turn",
                format!("the negotiation has at most {} rounds", n.setup.max_rounds),
            ));
        }
        Ok(())
    }

    // ---- moves ----

    async fn offer(
        &mut self,
        id: &str,
        round: u32,
        terms: Terms,
        sig: String,
        signed: Value,
    ) -> Reply {
        let now = now_ms();
        let key = self.key;
        if !frames::verify(&key, &signed, &sig) {
            self.state
                .risk
                .note(&self.agent.id, "signature_failure", now);
            return Err(FrameError::new(
                "bad_signature",
                "sig is not your key's Ed25519 signature over the JCS bytes of the frame without sig",
            ));
        }
        let n = self.fetch(id, false).await?;
        Self::check_move(n, round, now)?;
        let ranges = n.setup.check_ranges(&terms);
        let lowball = terms.lines.iter().any(|l| {
            n.setup.line(&l.variant_id).is_some_and(|s| {
                (l.unit_price as f64) < crate::risk::monitor::LOWBALL_SHARE * s.floor as f64
            })
        });
        let n = n.clone();
        if ranges.is_err() || lowball {
            self.state
                .risk
                .note(&self.agent.id, "offer_out_of_range", now);
        }
        ranges.map_err(|m| FrameError::new("terms_out_of_range", m))?;
        let mut frame = signed;
        frame["sig"] = json!(sig);
        let agent_move = Move {
            round,
            side: "agent",
            kind: "offer",
            total: Some(n.setup.total(&terms)),
            terms: Some(terms.clone()),
            frame,
            sig: Some(sig.clone()),
            at: now,
        };
        if let Err(r) = self.state.risk.gate_move(&n.agent_id, now) {
            return self
                .finish(&n, vec![agent_move], risk_reason(&r), now)
                .await;
        }
        let decision = strategy::decide(
            &n.setup,
            &Aspiration,
            &terms,
            Moment { round, now },
            n.setup.remaining_limit,
        );
        match decision {
            Decision::Counter(t) => {
                let reply = frames::signed(
                    &self.service,
                    json!({"type": "offer", "negotiation_id": id, "round": round + 1,
                           "terms": t.to_json(), "expires_at": n.setup.deadline_at}),
                );
                // The brand's offer is the negotiation's exposure from now on (once stored).
                let counted = self.state.risk.negotiation_entry(&n.id);
                if let Err(r) = self.state.risk.admit_value(
                    &n.id,
                    &n.agent_id,
                    &n.customer_id,
                    n.setup.total(&t),
                    n.setup.deadline_at,
                    now,
                ) {
                    return self
                        .finish(&n, vec![agent_move], risk_reason(&r), now)
                        .await;
                }
                let brand_move = Move {
                    round: round + 1,
                    side: "brand",
                    kind: "offer",
                    total: Some(n.setup.total(&t)),
                    terms: Some(t),
                    sig: reply["sig"].as_str().map(str::to_string),
                    frame: reply.clone(),
                    at: now,
                };
                let stored = self
                    .commit(
                        &n,
                        vec![agent_move, brand_move],
                        Status::Offering,
                        None,
                        now,
                    )
                    .await;
                if let (Err(_), Some(entry)) = (&stored, counted) {
                    // The offer was not stored (another socket moved first, or the store
                    // failed): the negotiation counts as it did before it.
                    self.state.risk.restore_negotiation(&n.id, entry);
                }
                stored?;
                Ok(vec![reply])
            }
            Decision::End(reason) => self.finish(&n, vec![agent_move], reason, now).await,
            Decision::Accept => {
                self.deal(&n, terms, agent_move, "offer", round, sig, now)
                    .await
            }
        }
    }

    async fn accept(
        &mut self,
        id: &str,
        round: u32,
        terms_hash: &str,
        sig: String,
        signed: Value,
    ) -> Reply {
        let now = now_ms();
        let key = self.key;
        if !frames::verify(&key, &signed, &sig) {
            self.state
                .risk
                .note(&self.agent.id, "signature_failure", now);
            return Err(FrameError::new(
                "bad_signature",
                "sig is not your key's Ed25519 signature over the JCS bytes of the frame without sig",
            ));
        }
        let n = self.fetch(id, false).await?;
        Self::check_move(n, round, now)?;
        let Some(offer) = n.open_brand_offer() else {
            return Err(FrameError::new(
                "nothing_to_accept",
                "the brand has made no offer to accept yet: make an offer",
            ));
        };
        let terms = offer
            .terms
            .clone()
            .ok_or_else(|| Self::internal("offer without terms"))?;
        if terms.hash() != terms_hash {
            return Err(FrameError::new(
                "hash_mismatch",
                format!(
                    "terms_hash is not the hash of the brand's offer of round {}: {}",
                    offer.round,
                    terms.hash()
                ),
            ));
        }
        let n = n.clone();
        let mut frame = signed;
        frame["sig"] = json!(sig);
        let agent_move = Move {
            round,
            side: "agent",
            kind: "accept",
            total: Some(n.setup.total(&terms)),
            terms: Some(terms.clone()),
            frame,
            sig: Some(sig.clone()),
            at: now,
        };
        self.deal(&n, terms, agent_move, "accept", round, sig, now)
            .await
    }

    async fn end(&mut self, id: &str, reason: &str) -> Reply {
        let now = now_ms();
        let n = self.fetch(id, false).await?;
        let status = n.status(now);
        if !status.is_live() {
            return Err(FrameError::new(
                "negotiation_closed",
                format!("the negotiation is already {}", status.as_str()),
            ));
        }
        let n = n.clone();
        let frame = json!({"type": "end", "negotiation_id": id, "reason": reason});
        let m = Move {
            round: n.round() + 1,
            side: "agent",
            kind: "end",
            terms: None,
            total: None,
            frame,
            sig: None,
            at: now,
        };
        self.commit(&n, vec![m], Status::Ended, Some("ended_by_agent"), now)
            .await?;
        metrics::ended("ended_by_agent", n.round() + 1);
        Ok(vec![
            json!({"type": "ended", "negotiation_id": id, "reason": "ended_by_agent"}),
        ])
    }

    async fn resume(&mut self, id: &str) -> Reply {
        let now = now_ms();
        let n = self.fetch(id, true).await?.clone();
        if n.status(now) == Status::Expired && n.stored_status.is_live() {
            self.state.risk.release(id);
            if nstore::expire(&self.state.store, id, now)
                .await
                .map_err(Self::internal)?
            {
                metrics::ended("deadline", n.round());
            }
            if let Some(c) = self.cache.get_mut(id) {
                c.stored_status = Status::Expired;
            }
        }
        let deal = match &n.deal_id {
            Some(_) => nstore::deal_of(&self.state.store, id)
                .await
                .map_err(Self::internal)?
                .map(|d| d.frame()),
            None => None,
        };
        Ok(vec![n.state_frame(now, deal.as_ref())])
    }

    /// A circuit breaker covering this agent opened: every live negotiation on this socket
    /// ends (`ended`, `circuit_open`).
    async fn end_for_circuit(&mut self) -> Vec<Value> {
        let now = now_ms();
        if self.state.risk.gate_move(&self.agent.id, now).is_ok() {
            return Vec::new();
        }
        let live: Vec<Negotiation> = self
            .cache
            .values()
            .filter(|n| n.status(now).is_live())
            .cloned()
            .collect();
        let mut out = Vec::new();
        for n in live {
            match self.finish(&n, Vec::new(), "circuit_open", now).await {
                Ok(frames) => out.extend(frames),
                Err(e) => tracing::debug!(negotiation = %n.id, code = e.code, "not ended"),
            }
        }
        out
    }

    /// The brand ends the negotiation after the agent's move (`rounds`, `limit`, `rejected`).
    async fn finish(
        &mut self,
        n: &Negotiation,
        mut moves: Vec<Move>,
        reason: &'static str,
        now: i64,
    ) -> Reply {
        let round = moves.last().map(|m| m.round).unwrap_or(n.round()) + 1;
        let frame = json!({"type": "ended", "negotiation_id": n.id, "reason": reason});
        moves.push(Move {
            round,
            side: "brand",
            kind: "end",
            terms: None,
            total: None,
            frame: frame.clone(),
            sig: None,
            at: now,
        });
        self.commit(n, moves, Status::Ended, Some(reason), now)
            .await?;
        metrics::ended(reason, round);
        Ok(vec![frame])
    }

    /// Stores the moves (before any answer goes out) and updates the cache.
    async fn commit(
        &mut self,
        n: &Negotiation,
        moves: Vec<Move>,
        status: Status,
        reason: Option<&str>,
        now: i64,
    ) -> Result<(), FrameError> {
        let step = Step {
            negotiation_id: &n.id,
            expect_round: n.round(),
            moves: &moves,
            status,
            end_reason: reason,
            now,
        };
        match nstore::store_step(&self.state.store, &step).await {
            Ok(()) => {}
            Err(StepError::Stale) => return Err(self.stale(&n.id)),
            Err(StepError::Store(e)) => return Err(Self::internal(e)),
        }
        if let Some(c) = self.cache.get_mut(&n.id) {
            c.moves.extend(moves);
            c.stored_status = status;
            if let Some(r) = reason {
                c.end_reason = Some(r.to_string());
            }
            if !status.is_live() {
                self.deadlines.remove(&(c.setup.deadline_at, c.id.clone()));
            }
        }
        if !status.is_live() {
            self.state.risk.release(&n.id);
        }
        Ok(())
    }

    /// Another socket moved first: forget the cached copy.
    fn stale(&mut self, id: &str) -> FrameError {
        self.cache.remove(id);
        FrameError::new(
            "stale_round",
            "another move took this round first; send resume to see the state",
        )
    }

    /// A deal on `terms`: checked against every hard limit and the token's spending ledger
    /// (reserved atomically), signed by the service key, stored with its audit entry.
    #[allow(clippy::too_many_arguments)]
    async fn deal(
        &mut self,
        n: &Negotiation,
        terms: Terms,
        agent_move: Move,
        how: &'static str,
        round: u32,
        agent_sig: String,
        now: i64,
    ) -> Reply {
        let store = self.state.store.clone();
        let total = n.setup.total(&terms);
        if let Err(r) = self.state.risk.gate_move(&n.agent_id, now).and_then(|()| {
            self.state.risk.admit_value(
                &n.id,
                &n.agent_id,
                &n.customer_id,
                total,
                n.setup.deadline_at,
                now,
            )
        }) {
            return self.finish(n, vec![agent_move], risk_reason(&r), now).await;
        }
        let remaining = self.remaining().await?;
        if limits::check(&n.setup, &terms, remaining).is_err() {
            return self.finish(n, vec![agent_move], "limit", now).await;
        }
        // Reserve the deal's value under the token first, then check the token (with every
        // attenuation) against the new total: concurrent deals each see the others.
        let (reservation, spent) = store
            .reserve_spend(&n.token_id, total, OPERATION, None, now)
            .await
            .map_err(Self::internal)?;
        let categories: Vec<String> = n
            .setup
            .lines
            .iter()
            .map(|l| l.category.to_lowercase())
            .collect();
        let allowed = match &self.grant.token {
            Some(token) => tokens::authorize(
                token,
                &tokens::CallFacts {
                    operation: OPERATION,
                    customer_id: &n.customer_id,
                    spend: spent,
                    categories: &categories,
                    now,
                },
            )
            .is_ok(),
            None => false,
        };
        if !allowed {
            let _ = store.settle_spend(&reservation, false, now).await;
            return self.finish(n, vec![agent_move], "limit", now).await;
        }
        let deal_id = format!("deal_{}", crate::util::random_token(16));
        let deal_json = json!({
            "deal_id": deal_id,
            "negotiation_id": n.id,
            "agent_key_id": self.agent.key_id,
            "customer_id": n.customer_id,
            "terms": terms.to_json(),
            "total": total,
            "agent_move": how,
            "agent_round": round,
            "valid_until": now + n.setup.deal_valid_ms,
            "created_at": now,
        });
        let deal = Deal {
            deal_hash: crate::util::jcs_sha256(&deal_json),
            brand_sig: frames::sign(&self.service, &deal_json),
            agent_sig,
            deal: deal_json,
            audit_seq: 0,
        };
        let frame = deal.frame();
        let mut moves = vec![agent_move];
        if how == "offer" {
            moves.push(Move {
                round: round + 1,
                side: "brand",
                kind: "accept",
                total: Some(total),
                terms: Some(terms.clone()),
                sig: Some(deal.brand_sig.clone()),
                frame: frame.clone(),
                at: now,
            });
        }
        let step = Step {
            negotiation_id: &n.id,
            expect_round: n.round(),
            moves: &moves,
            status: Status::Agreed,
            end_reason: None,
            now,
        };
        match nstore::store_deal(&store, &step, &deal, &n.agent_id, &n.customer_id).await {
            Ok(_) => {}
            Err(e) => {
                let _ = store.settle_spend(&reservation, false, now).await;
                return Err(match e {
                    StepError::Stale => self.stale(&n.id),
                    StepError::Store(e) => Self::internal(e),
                });
            }
        }
        self.state.risk.deal(
            &n.id,
            deal.id(),
            &n.agent_id,
            &n.customer_id,
            total,
            now + n.setup.deal_valid_ms,
        );
        if let Err(e) = store.settle_spend(&reservation, true, now_ms()).await {
            tracing::error!(error = %e, reservation, "could not settle a deal's reservation");
        }
        let last = moves.last().map(|m| m.round).unwrap_or(round);
        if let Some(c) = self.cache.get_mut(&n.id) {
            c.moves.extend(moves);
            c.stored_status = Status::Agreed;
            c.deal_id = Some(deal.id().to_string());
            self.deadlines.remove(&(c.setup.deadline_at, c.id.clone()));
        }
        metrics::agreed(
            &n.setup,
            last,
            now - n.setup.opened_at,
            n.setup.utility(&terms),
            n.setup.advantage(&terms),
        );
        Ok(vec![frame])
    }
}

/// The `ended` reason for a risk refusal mid-negotiation.
fn risk_reason(r: &crate::risk::Refusal) -> &'static str {
    if r.code == "circuit_open" {
        "circuit_open"
    } else {
        "limit"
    }
}

// ---- signed reads ----

async fn get_negotiation(
    State(state): State<AppState>,
    Path(id): Path<String>,
    req: Request,
) -> Response {
    let (parts, _) = req.into_parts();
    let caller = match signed_caller(&state, &parts).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let agent = caller
        .agent
        .as_ref()
        .map(|a| a.id.clone())
        .unwrap_or_default();
    let n = match nstore::load(&state.store, &id).await {
        Ok(Some(n)) if n.agent_id == agent => n,
        Ok(_) => {
            return error(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such negotiation of yours",
            );
        }
        Err(e) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                &e.to_string(),
            );
        }
    };
    let mut body = n.transcript(now_ms());
    if n.deal_id.is_some()
        && let Ok(Some(d)) = nstore::deal_of(&state.store, &id).await
    {
        body["deal"] = d.frame();
    }
    axum::Json(body).into_response()
}

async fn get_deal(State(state): State<AppState>, Path(id): Path<String>, req: Request) -> Response {
    let (parts, _) = req.into_parts();
    let caller = match signed_caller(&state, &parts).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let agent = caller
        .agent
        .as_ref()
        .map(|a| a.id.clone())
        .unwrap_or_default();
    match nstore::deal(&state.store, &id).await {
        Ok(Some((d, owner))) if owner == agent => {
            let mut body = d.frame();
            if let Some(o) = body.as_object_mut() {
                o.remove("type");
                o.insert("audit_seq".into(), json!(d.audit_seq));
            }
            if let Ok(key) = super::service_key(&state) {
                body["brand_public_key"] = json!(identity::encode_public_key(&key.verifying_key()));
            }
            // Its settlement (`POST /agent/v1/deals/{id}/settle`), when one was started.
            body["settlement"] = crate::settle::view(&state, &id)
                .await
                .unwrap_or(Value::Null);
            axum::Json(body).into_response()
        }
        Ok(_) => error(StatusCode::NOT_FOUND, "not_found", "no such deal of yours"),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            &e.to_string(),
        ),
    }
}

// ---- discovery ----

/// The agent card's extension: where to negotiate and under which rules.
pub fn card_extension(state: &AppState, base: &str) -> Value {
    let c = NegotiationConfig::for_brand(&state.config.brand.dir);
    let ws = if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}{WS_PATH}")
    } else if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}{WS_PATH}")
    } else {
        format!("{base}{WS_PATH}")
    };
    json!({
        "uri": EXTENSION,
        "description": "Negotiate price, quantity and shipping with the brand's agent: stacked \
                        alternating offers over one WebSocket (frames signed with the agent's \
                        key; deals signed by both sides). The upgrade is RFC 9421-signed over \
                        the http(s) form of the URL and carries a capability token allowing \
                        `negotiate`.",
        "required": false,
        "params": {
            "url": ws,
            "targetUri": format!("{base}{WS_PATH}"),
            "operation": OPERATION,
            "enabled": c.enabled,
            "maxRounds": c.max_rounds,
            "deadlineMs": c.deadline_ms,
            "currency": c.currency,
            "negotiation": format!("{base}/agent/v1/negotiations/{{id}}"),
            "deal": format!("{base}/agent/v1/deals/{{id}}"),
            "settle": format!("{base}/agent/v1/deals/{{id}}/settle"),
        }
    })
}

/// The OpenAPI entries of the signed reads.
pub fn openapi_paths(paths: &mut serde_json::Map<String, Value>) {
    let secured = json!([{"agentSignature": []}]);
    let err = |d: &str| json!({"description": d, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
    for (path, op, param, summary) in [
        (
            "/agent/v1/negotiations/{negotiation_id}",
            "get_negotiation",
            "negotiation_id",
            "A negotiation of the signing agent: its state, issues, list terms and transcript \
             (every move with its signature), and the deal when there is one. Negotiating \
             itself happens over the WebSocket /agent/v1/negotiations/ws (see the agent card's \
             urn:concierge:extension:negotiation:v1).",
        ),
        (
            "/agent/v1/deals/{deal_id}",
            "get_deal",
            "deal_id",
            "A deal of the signing agent with both signatures: brand_sig (the service key over \
             the JCS bytes of `deal`) and agent_sig (the agent's committing frame), deal_hash \
             (sha256 of the JCS bytes), the brand's public key, and its settlement (status, \
             reason, order_id, the saga's steps) once one was started.",
        ),
    ] {
        paths.insert(
            path.to_string(),
            json!({"get": {
                "operationId": op,
                "summary": summary,
                "tags": ["negotiation"],
                "parameters": [{"name": param, "in": "path", "required": true, "schema": {"type": "string"}}],
                "security": secured,
                "responses": {
                    "200": {"description": "Found.", "content": {"application/json": {"schema": {"type": "object"}}}},
                    "401": err("No valid signature (see error.code)."),
                    "404": err("No such negotiation or deal of this agent."),
                },
            }}),
        );
    }
}
