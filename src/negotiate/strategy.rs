//! The brand's side: a time-dependent aspiration strategy (Boulware/linear/conceder by its
//! exponent) with the AC_next acceptance rule, and [`decide`], which runs any [`Strategy`] and
//! holds what it proposes to the hard limits ([`super::limits`]). Prices come from here — from
//! the catalogue and `brand/negotiation.toml` — never from a language model.

use super::limits::{self, Violation};
use super::terms::{LineSetup, Setup, Terms};
use crate::commerce::Minor;

/// What the brand does with the agent's offer.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Accept the agent's offer as it stands.
    Accept,
    /// Counter with these terms.
    Counter(Terms),
    /// End the negotiation, with the `ended` reason.
    End(&'static str),
}

/// Where a negotiation stands when the brand must answer.
#[derive(Debug, Clone, Copy)]
pub struct Moment {
    /// The round of the agent's offer being answered.
    pub round: u32,
    pub now: i64,
}

impl Moment {
    /// Time used, 0..=1: the larger of the rounds used and the wall-clock time used.
    pub fn t(&self, setup: &Setup) -> f64 {
        let rounds = f64::from(self.round + 1) / f64::from(setup.max_rounds.max(1));
        let span = (setup.deadline_at - setup.opened_at).max(1) as f64;
        let time = (self.now - setup.opened_at) as f64 / span;
        rounds.max(time).clamp(0.0, 1.0)
    }
}

/// A way of answering offers. The server's guard ([`decide`]) checks whatever it returns.
pub trait Strategy {
    fn respond(&self, setup: &Setup, offer: &Terms, at: Moment) -> Decision;
}

/// The brand's configured strategy: the price's position between floor (0) and ask (1) is
/// `x(t) = 1 − (1 − target)·t^e`; accept when the offer is worth at least the next counter
/// (AC_next), or at least the target once `accept_near_deadline` of the time is used.
#[derive(Debug, Clone, Copy, Default)]
pub struct Aspiration;

/// Unit price at position `x` between the line's floor and its ask for `quantity` units.
pub fn price_at(setup: &Setup, line: &LineSetup, quantity: i64, x: f64) -> Minor {
    let ask = setup.ask(line, quantity);
    let span = (ask - line.floor).max(0) as f64;
    line.floor + (x.clamp(0.0, 1.0) * span).ceil() as Minor
}

impl Aspiration {
    pub fn position(setup: &Setup, t: f64) -> f64 {
        1.0 - (1.0 - setup.target) * t.powf(setup.exponent)
    }

    /// The counter-offer at time `t`, on the structure (quantities, shipping) of `like`.
    pub fn offer(setup: &Setup, like: &Terms, t: f64) -> Terms {
        let x = Aspiration::position(setup, t);
        setup.priced(like, |s, q| price_at(setup, s, q, x))
    }
}

impl Strategy for Aspiration {
    fn respond(&self, setup: &Setup, offer: &Terms, at: Moment) -> Decision {
        // The brand's last counter-offer (the agent has one move left after it) stays on the
        // curve, above the target: a buyer who can pay it takes it, and one who cannot still
        // gets its final offer — the one no counter can follow — accepted at the target or
        // above.
        let last = at.round + 1 >= setup.max_rounds;
        let t = at.t(setup);
        let next = Aspiration::offer(setup, offer, t);
        let theirs = setup.margin(offer);
        if theirs >= setup.margin(&next) {
            return Decision::Accept;
        }
        if t >= setup.accept_near_deadline || last {
            let target = setup.priced(offer, |s, q| price_at(setup, s, q, setup.target));
            if theirs >= setup.margin(&target) {
                return Decision::Accept;
            }
        }
        Decision::Counter(next)
    }
}

/// Brings the brand's counter-offer inside the hard limits where it can: prices up to the
/// floors, quantities down to what is available, the total down to what the token has left
/// (prices moved towards the floors). None when no such terms exist.
pub fn fit(setup: &Setup, terms: &Terms, remaining: Option<Minor>) -> Option<Terms> {
    let mut t = terms.clone();
    t.currency = setup.currency.clone();
    if setup.shipping_option(&t.shipping).is_none() {
        t.shipping = setup.shipping.first()?.id.clone();
    }
    t.lines.retain(|l| setup.line(&l.variant_id).is_some());
    for l in &mut t.lines {
        let s = setup.line(&l.variant_id)?;
        l.quantity = l.quantity.clamp(s.min_quantity, s.max_quantity);
        l.unit_price = l
            .unit_price
            .clamp(s.floor.max(1), s.list_price.max(s.floor));
    }
    if let Some(remaining) = remaining {
        let total = setup.total(&t);
        if total > remaining {
            let floors = setup.total(&setup.priced(&t, |s, _| s.floor.max(1)));
            if floors > remaining {
                return None;
            }
            // Move every line the same share of the way down to its floor.
            let over = (total - floors) as f64;
            let keep = (remaining - floors) as f64 / over;
            for l in &mut t.lines {
                let s = setup.line(&l.variant_id)?;
                let above = (l.unit_price - s.floor.max(1)) as f64;
                l.unit_price = s.floor.max(1) + (above * keep).floor() as Minor;
            }
        }
    }
    limits::check(setup, &t, remaining).ok().map(|()| t)
}

/// The brand's answer to the agent's offer made in `at.round`: the strategy's decision, held
/// to the hard limits. An acceptance that breaks a limit becomes a counter-offer (or an end);
/// a counter-offer is fitted inside the limits (or the negotiation ends with `limit`); no
/// counter-offer is made when it would leave the agent no round to answer it (`rounds`).
pub fn decide(
    setup: &Setup,
    strategy: &dyn Strategy,
    offer: &Terms,
    at: Moment,
    remaining: Option<Minor>,
) -> Decision {
    let can_counter = at.round + 1 < setup.max_rounds;
    let decision = strategy.respond(setup, offer, at);
    let counter = |terms: &Terms| -> Decision {
        if !can_counter {
            return Decision::End("rounds");
        }
        match fit(setup, terms, remaining) {
            Some(t) => Decision::Counter(t),
            None => Decision::End("limit"),
        }
    };
    match decision {
        Decision::Accept => match limits::check(setup, offer, remaining) {
            Ok(()) => Decision::Accept,
            Err(Violation::OverLimit { .. }) | Err(Violation::BelowFloor { .. }) => {
                counter(&Aspiration::offer(setup, offer, at.t(setup)))
            }
            Err(_) => Decision::End("limit"),
        },
        Decision::Counter(t) => counter(&t),
        Decision::End(r) => Decision::End(r),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::negotiate::config::ShippingOption;
    use crate::negotiate::terms::Line;

    pub(crate) fn setup() -> Setup {
        Setup {
            currency: "USD".into(),
            lines: vec![
                LineSetup {
                    variant_id: "v1".into(),
                    product_id: "p1".into(),
                    name: "Shirt".into(),
                    category: "t-shirt".into(),
                    list_price: 5000,
                    floor: 4000,
                    cost: 2000,
                    min_quantity: 1,
                    max_quantity: 10,
                    quantity: 2,
                },
                LineSetup {
                    variant_id: "v2".into(),
                    product_id: "p2".into(),
                    name: "Kettle".into(),
                    category: "tea kettle".into(),
                    list_price: 12000,
                    floor: 10000,
                    cost: 7000,
                    min_quantity: 1,
                    max_quantity: 3,
                    quantity: 1,
                },
            ],
            shipping: vec![
                ShippingOption {
                    id: "standard".into(),
                    label: "Standard".into(),
                    price: 599,
                    cost: 450,
                },
                ShippingOption {
                    id: "express".into(),
                    label: "Express".into(),
                    price: 1499,
                    cost: 1100,
                },
            ],
            breaks: vec![(5, 0.05)],
            exponent: 3.0,
            target: 0.25,
            accept_near_deadline: 0.85,
            remaining_limit: Some(30_000),
            token_categories: vec![],
            max_rounds: 20,
            opened_at: 0,
            deadline_at: 30_000,
            deal_valid_ms: 86_400_000,
        }
    }

    /// A strategy that does whatever a seeded generator says: accept, end, or counter with
    /// arbitrary (often wild) terms.
    struct Random(std::cell::RefCell<rand_chacha::ChaCha8Rng>);

    impl Strategy for Random {
        fn respond(&self, setup: &Setup, offer: &Terms, _at: Moment) -> Decision {
            use rand::Rng;
            let mut r = self.0.borrow_mut();
            match r.random_range(0..10) {
                0..=3 => Decision::Accept,
                4 => Decision::End("rejected"),
                _ => Decision::Counter(Terms {
                    lines: offer
                        .lines
                        .iter()
                        .map(|l| Line {
                            variant_id: if r.random_bool(0.05) {
                                "ghost".into()
                            } else {
                                l.variant_id.clone()
                            },
                            quantity: r.random_range(-2..40),
                            unit_price: r.random_range(-100..30_000),
                        })
                        .collect(),
                    shipping: if r.random_bool(0.9) {
                        setup.shipping[r.random_range(0..2)].id.clone()
                    } else {
                        "teleport".into()
                    },
                    currency: if r.random_bool(0.95) {
                        "USD".into()
                    } else {
                        "EUR".into()
                    },
                }),
            }
        }
    }

    fn random_offer(r: &mut rand_chacha::ChaCha8Rng, setup: &Setup) -> Terms {
        use rand::Rng;
        let n = r.random_range(1..=2);
        Terms {
            lines: setup.lines[..n]
                .iter()
                .map(|s| Line {
                    variant_id: s.variant_id.clone(),
                    quantity: r.random_range(1..=s.max_quantity),
                    unit_price: r.random_range(1..=s.list_price),
                })
                .collect(),
            shipping: setup.shipping[r.random_range(0..2)].id.clone(),
            currency: "USD".into(),
        }
    }

    #[test]
    fn no_strategy_gets_a_deal_or_offer_past_a_hard_limit() {
        use rand::{Rng, SeedableRng};
        let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(14);
        let mut deals = 0;
        let mut counters = 0;
        for case in 0..20_000 {
            let mut s = setup();
            s.remaining_limit = if r.random_bool(0.2) {
                None
            } else {
                Some(r.random_range(0..60_000))
            };
            if r.random_bool(0.3) {
                s.token_categories = vec!["t-shirt".into()];
            }
            s.exponent = r.random_range(0.1..10.0);
            s.target = r.random_range(0.0..1.0);
            let strategy: Box<dyn Strategy> = if case % 2 == 0 {
                Box::new(Random(std::cell::RefCell::new(
                    rand_chacha::ChaCha8Rng::seed_from_u64(case),
                )))
            } else {
                Box::new(Aspiration)
            };
            let offer = random_offer(&mut r, &s);
            let at = Moment {
                round: r.random_range(1..s.max_rounds + 2),
                now: r.random_range(0..40_000),
            };
            match decide(&s, strategy.as_ref(), &offer, at, s.remaining_limit) {
                Decision::Accept => {
                    deals += 1;
                    limits::check(&s, &offer, s.remaining_limit)
                        .expect("an accepted offer within every limit");
                    for l in &offer.lines {
                        assert!(l.unit_price >= s.line(&l.variant_id).unwrap().floor);
                    }
                    if let Some(rem) = s.remaining_limit {
                        assert!(s.total(&offer) <= rem);
                    }
                }
                Decision::Counter(t) => {
                    counters += 1;
                    assert!(
                        at.round + 1 < s.max_rounds,
                        "a counter leaves the agent a round"
                    );
                    limits::check(&s, &t, s.remaining_limit)
                        .expect("a counter-offer within every limit");
                }
                Decision::End(_) => {}
            }
        }
        assert!(
            deals > 300 && counters > 1000,
            "deals {deals}, counters {counters}"
        );
    }

    #[test]
    fn aspiration_concedes_over_time_and_accepts_at_least_its_next_offer() {
        let s = setup();
        let like = s.list_terms();
        let early = Aspiration::offer(&s, &like, 0.1);
        let late = Aspiration::offer(&s, &like, 0.9);
        assert!(s.margin(&early) > s.margin(&late));
        assert!(s.total(&late) >= s.total(&s.priced(&like, |l, _| l.floor)));
        // An offer at list price is accepted at once; one at the floors is countered early.
        let at = Moment { round: 1, now: 0 };
        assert_eq!(Aspiration.respond(&s, &like, at), Decision::Accept);
        let floors = s.priced(&like, |l, _| l.floor);
        assert!(matches!(
            Aspiration.respond(&s, &floors, at),
            Decision::Counter(_)
        ));
        assert!((s.advantage(&like) - 1.0).abs() < 1e-9);
        assert!(s.advantage(&floors).abs() < 1e-9);
    }

    #[test]
    fn the_last_counter_stays_above_the_target_and_the_final_offer_gets_the_target() {
        let mut s = setup();
        s.accept_near_deadline = 0.95;
        let like = s.list_terms();
        let at_target = s.priced(&like, |l, q| price_at(&s, l, q, s.target));
        // The agent's second-to-last move at the target: countered on the curve, above it
        // (a buyer who can pay more may take it).
        let before_last = Moment {
            round: s.max_rounds - 3,
            now: 0,
        };
        match Aspiration.respond(&s, &at_target, before_last) {
            Decision::Counter(t) => assert!(s.margin(&t) > s.margin(&at_target)),
            d => panic!("{d:?}"),
        }
        // Its final move (no counter can follow) at the target: accepted; below it: not.
        let final_move = Moment {
            round: s.max_rounds - 1,
            now: 0,
        };
        assert_eq!(
            Aspiration.respond(&s, &at_target, final_move),
            Decision::Accept
        );
        let below = s.priced(&like, |l, q| price_at(&s, l, q, s.target) - 100);
        assert!(!matches!(
            Aspiration.respond(&s, &below, final_move),
            Decision::Accept
        ));
    }
}
