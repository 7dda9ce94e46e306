//! Gift cards: the balance is the customer's stored payment method's (`payment_methods`,
//! as τ-bench's users carry them). A charge debits it and a reversal credits it back, each in
//! the settlement step's own transaction, so the balance and the saga log never disagree.

use futures::future::BoxFuture;
use serde_json::json;
use sqlx::Row;

use super::{Charged, Payment, PaymentError, PaymentProvider, Reversal, StepTx};

pub struct GiftCard;

fn internal(e: impl std::fmt::Display) -> PaymentError {
    PaymentError::Refused {
        code: "payment_unavailable",
        message: format!("the gift card could not be read: {e}"),
        reference: None,
    }
}

impl PaymentProvider for GiftCard {
    fn name(&self) -> &'static str {
        "gift_card"
    }

    fn charge<'a>(
        &'a self,
        p: &'a Payment,
        step: &'a mut StepTx,
    ) -> BoxFuture<'a, Result<Charged, PaymentError>> {
        Box::pin(async move {
            let tx = step.get().await.map_err(internal)?;
            let row = sqlx::query(
                "SELECT balance_minor, currency FROM payment_methods WHERE id = $1 AND customer_id = $2",
            )
            .bind(p.method.id.as_str())
            .bind(p.customer_id.as_str())
            .fetch_optional(&mut **tx)
            .await
            .map_err(internal)?;
            let Some(row) = row else {
                return Err(PaymentError::Refused {
                    code: "payment_refused",
                    message: format!("the customer has no gift card {}", p.method.id),
                    reference: None,
                });
            };
            let balance: i64 = row
                .try_get::<Option<i64>, _>("balance_minor")
                .map_err(internal)?
                .unwrap_or(0);
            let currency: String = row.try_get("currency").map_err(internal)?;
            if !currency.eq_ignore_ascii_case(&p.currency) {
                return Err(PaymentError::Declined {
                    code: "currency_mismatch".into(),
                    message: format!(
                        "gift card {} holds {currency}, the deal is in {}",
                        p.method.id, p.currency
                    ),
                    reference: None,
                });
            }
            if balance < p.amount {
                return Err(PaymentError::Declined {
                    code: "insufficient_balance".into(),
                    message: format!(
                        "gift card {} has {} left; the deal costs {}",
                        p.method.id,
                        crate::commerce::format_money(balance, &currency),
                        crate::commerce::format_money(p.amount, &p.currency)
                    ),
                    reference: None,
                });
            }
            let done = sqlx::query(
                "UPDATE payment_methods SET balance_minor = balance_minor - $3 \
                 WHERE id = $1 AND customer_id = $2 AND balance_minor >= $3",
            )
            .bind(p.method.id.as_str())
            .bind(p.customer_id.as_str())
            .bind(p.amount)
            .execute(&mut **tx)
            .await
            .map_err(internal)?;
            if done.rows_affected() != 1 {
                return Err(PaymentError::Declined {
                    code: "insufficient_balance".into(),
                    message: format!("gift card {} no longer covers the deal", p.method.id),
                    reference: None,
                });
            }
            Ok(Charged {
                reference: p.method.id.clone(),
                effects: json!([{
                    "payment_method_id": p.method.id,
                    "balance_before": balance,
                    "balance_after": balance - p.amount,
                }]),
            })
        })
    }

    fn reverse<'a>(
        &'a self,
        p: &'a Payment,
        reference: Option<&'a str>,
        step: &'a mut StepTx,
    ) -> BoxFuture<'a, Result<Reversal, String>> {
        Box::pin(async move {
            // A gift-card charge either committed with its step (and returned its reference)
            // or changed nothing.
            if reference.is_none() {
                return Ok(Reversal::Nothing);
            }
            let tx = step.get().await.map_err(|e| e.to_string())?;
            let done = sqlx::query(
                "UPDATE payment_methods SET balance_minor = COALESCE(balance_minor, 0) + $3 \
                 WHERE id = $1 AND customer_id = $2",
            )
            .bind(p.method.id.as_str())
            .bind(p.customer_id.as_str())
            .bind(p.amount)
            .execute(&mut **tx)
            .await
            .map_err(|e| e.to_string())?;
            if done.rows_affected() != 1 {
                return Err(format!(
                    "gift card {} is gone; {} could not be credited back",
                    p.method.id, p.amount
                ));
            }
            Ok(Reversal::Refunded)
        })
    }
}
