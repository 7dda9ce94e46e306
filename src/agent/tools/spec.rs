//! The tools as an LLM or a consumer agent sees them: a JSON-Schema description of each tool
//! ([`tool_specs`], for function calling and MCP), and [`parse_call`], which turns a tool name and
//! JSON arguments into a [`ToolCall`], naming the field when an argument is wrong. Pure.

use serde_json::{Value, json};

use super::{ToolCall, ToolError};

/// One tool's description for function calling.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ToolSpec {
    pub name: &'static str,
    pub description: &'static str,
    /// A JSON Schema object for the arguments.
    pub parameters: Value,
    /// Changes shop data: confirm with the shopper first.
    pub write: bool,
}

const ORDER_ID: &str = "The order number, such as '#W0000000' (the '#' may be left out).";
const ITEM_IDS: &str = "Item ids (not product ids) from the order details, such as \
                        '1008292230'. List an id twice to mean two units.";
const NEW_ITEM_IDS: &str = "The new item ids, one per entry of item_ids and in the same order; \
                            each must be an available version of the same product.";
const METHOD: &str = "A payment method id of the customer, such as 'gift_card_0000000' or \
                      'credit_card_0000000' (see list_customer_orders or the order's payments).";

fn address_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "description": "Recipient name (optional)."},
            "address1": {"type": "string", "description": "First line, such as '123 Main St'."},
            "address2": {"type": "string", "description": "Second line, such as 'Apt 1', or ''."},
            "city": {"type": "string"},
            "state": {"type": "string", "description": "State or region, such as 'CA'."},
            "country": {"type": "string", "description": "Country, such as 'USA'."},
            "zip": {"type": "string", "description": "ZIP or postal code."},
            "phone": {"type": "string", "description": "Phone (optional)."}
        },
        "required": ["address1", "city", "country", "zip"],
        "additionalProperties": false
    })
}

fn object(properties: Value, required: &[&str]) -> Value {
    json!({
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": false
    })
}

fn string(description: &str) -> Value {
    json!({"type": "string", "description": description})
}

fn strings(description: &str) -> Value {
    json!({"type": "array", "items": {"type": "string"}, "description": description})
}

/// Every tool, in a stable order.
pub fn tool_specs() -> Vec<ToolSpec> {
    vec![
        ToolSpec {
            name: "find_customer",
            description: "Find the customer's account to verify who they are: by email, or by \
                          first name, last name and ZIP code. Returns only whether exactly one \
                          account matches and its customer id.",
            parameters: object(
                json!({
                    "email": string("The email address on the account."),
                    "first_name": string("First name (with last_name and zip)."),
                    "last_name": string("Last name (with first_name and zip)."),
                    "zip": string("ZIP code of an address on the account."),
                }),
                &[],
            ),
            write: false,
        },
        ToolSpec {
            name: "get_order",
            description: "The details of one of the verified customer's orders: status, items \
                          (item ids, product ids, options, prices), shipping address, \
                          fulfilments and tracking, payments, returns and exchanges.",
            parameters: object(json!({"order_id": string(ORDER_ID)}), &["order_id"]),
            write: false,
        },
        ToolSpec {
            name: "list_customer_orders",
            description: "The verified customer's profile (name, email, default address, saved \
                          payment methods with gift-card balances) and a summary of their orders.",
            parameters: object(json!({}), &[]),
            write: false,
        },
        ToolSpec {
            name: "get_product",
            description: "A product and all its variants (item ids, options, price, \
                          availability). Takes a product id, not an item id.",
            parameters: object(
                json!({"product_id": string("The product id, such as '6086499569'.")}),
                &["product_id"],
            ),
            write: false,
        },
        ToolSpec {
            name: "check_availability",
            description: "The variants of a product matching some options (for example \
                          {\"color\": \"blue\", \"size\": \"M\"}), with availability, price and \
                          stock. Options left out match anything.",
            parameters: object(
                json!({
                    "product_id": string("The product id."),
                    "options": {"type": "object", "description": "Option name → wanted value.",
                                "additionalProperties": {"type": ["string", "number", "boolean"]}},
                }),
                &["product_id"],
            ),
            write: false,
        },
        ToolSpec {
            name: "delivery_estimate",
            description: "When an order arrives (or arrived): from the shipment's dates, else \
                          from the shop's handling and shipping times.",
            parameters: object(json!({"order_id": string(ORDER_ID)}), &["order_id"]),
            write: false,
        },
        ToolSpec {
            name: "return_eligibility",
            description: "Whether an order (or some of its items) can be returned or exchanged \
                          now, until when, the refund amount and where a refund may go.",
            parameters: object(
                json!({"order_id": string(ORDER_ID),
                       "item_ids": strings("Optional: only these items.")}),
                &["order_id"],
            ),
            write: false,
        },
        ToolSpec {
            name: "cancel_order",
            description: "Cancel a pending (not yet shipped) order and refund what was paid: \
                          gift cards at once, cards and PayPal in 5-7 business days. State the \
                          details and get the customer's explicit yes first.",
            parameters: object(
                json!({
                    "order_id": string(ORDER_ID),
                    "reason": {"type": "string", "enum": ["no longer needed", "ordered by mistake"],
                               "description": "Why the customer cancels."},
                }),
                &["order_id", "reason"],
            ),
            write: true,
        },
        ToolSpec {
            name: "modify_order_address",
            description: "Change the shipping address of a pending order. Get the customer's \
                          explicit yes first.",
            parameters: object(
                json!({"order_id": string(ORDER_ID), "address": address_schema()}),
                &["order_id", "address"],
            ),
            write: true,
        },
        ToolSpec {
            name: "modify_order_items",
            description: "Swap items of a pending order for other versions of the same products. \
                          Possible only once per order, so collect every change first; the price \
                          difference is paid or refunded with the given method. Get the \
                          customer's explicit yes first.",
            parameters: object(
                json!({
                    "order_id": string(ORDER_ID),
                    "item_ids": strings(ITEM_IDS),
                    "new_item_ids": strings(NEW_ITEM_IDS),
                    "payment_method_id": string(METHOD),
                }),
                &["order_id", "item_ids", "new_item_ids", "payment_method_id"],
            ),
            write: true,
        },
        ToolSpec {
            name: "modify_order_payment",
            description: "Pay a pending order with another of the customer's payment methods; \
                          the original payment is refunded. A gift card must cover the whole \
                          total. Get the customer's explicit yes first.",
            parameters: object(
                json!({"order_id": string(ORDER_ID), "payment_method_id": string(METHOD)}),
                &["order_id", "payment_method_id"],
            ),
            write: true,
        },
        ToolSpec {
            name: "return_items",
            description: "Request a return of items of a delivered order. The refund goes to the \
                          original payment method or one of the customer's gift cards. One \
                          return per order, so collect every item first. Get the customer's \
                          explicit yes first.",
            parameters: object(
                json!({
                    "order_id": string(ORDER_ID),
                    "item_ids": strings(ITEM_IDS),
                    "payment_method_id": string("Where the refund goes: the original payment \
                                                 method or one of the customer's gift cards."),
                }),
                &["order_id", "item_ids", "payment_method_id"],
            ),
            write: true,
        },
        ToolSpec {
            name: "exchange_items",
            description: "Request an exchange of items of a delivered order for other versions \
                          of the same products; the price difference is paid or refunded with \
                          the given method. One exchange per order, so collect every item first. \
                          Get the customer's explicit yes first.",
            parameters: object(
                json!({
                    "order_id": string(ORDER_ID),
                    "item_ids": strings(ITEM_IDS),
                    "new_item_ids": strings(NEW_ITEM_IDS),
                    "payment_method_id": string(METHOD),
                }),
                &["order_id", "item_ids", "new_item_ids", "payment_method_id"],
            ),
            write: true,
        },
        ToolSpec {
            name: "update_customer_address",
            description: "Change the default address on the verified customer's account (not \
                          the address of existing orders). Get the customer's explicit yes first.",
            parameters: object(json!({"address": address_schema()}), &["address"]),
            write: true,
        },
        ToolSpec {
            name: "escalate",
            description: "Hand the conversation to a person: when the request is outside what \
                          the tools can do, the customer asks for a person, or a change needs \
                          approval. Give a summary a team member can act on.",
            parameters: object(
                json!({
                    "reason": string("Short reason, such as 'needs_approval' or 'out of scope'."),
                    "summary": string("What the customer wants and what was done so far."),
                }),
                &["reason", "summary"],
            ),
            write: false,
        },
    ]
}

/// Parses a call from a tool name and its JSON arguments. Unknown tools, non-object arguments
/// and bad arguments are `InvalidArgument` errors whose message names the field. The arguments
/// are checked against the tool's own schema (so [`tool_specs`] and parsing cannot drift apart);
/// explicit nulls count as absent.
pub fn parse_call(name: &str, args: &Value) -> Result<ToolCall, ToolError> {
    let name = name.trim();
    let specs = tool_specs();
    let Some(spec) = specs.iter().find(|s| s.name == name) else {
        let known: Vec<&str> = specs.iter().map(|s| s.name).collect();
        return Err(ToolError::invalid(format!(
            "There is no tool {name:?}; the tools are {}.",
            known.join(", ")
        )));
    };
    let mut obj = match args {
        Value::Object(m) => m.clone(),
        Value::Null => serde_json::Map::new(),
        other => {
            return Err(ToolError::invalid(format!(
                "The arguments of {name} must be a JSON object, not {}.",
                kind_of(other)
            )));
        }
    };
    obj.retain(|_, v| !v.is_null());
    let args = Value::Object(obj);
    check(&spec.parameters, &args, "").map_err(ToolError::invalid)?;
    let mut tagged = args;
    if let Value::Object(m) = &mut tagged {
        m.insert("action".into(), Value::String(name.to_string()));
    }
    serde_json::from_value::<ToolCall>(tagged).map_err(|e| {
        ToolError::invalid(format!(
            "Bad arguments for {name}: {}.",
            e.to_string().trim_end_matches('.').replace('`', "")
        ))
    })
}

fn field(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Checks `value` against the small JSON-Schema subset the specs use (object with properties,
/// required and additionalProperties; string; array of strings; a list of scalar types).
fn check(schema: &Value, value: &Value, path: &str) -> Result<(), String> {
    let at = if path.is_empty() { "arguments" } else { path };
    let types: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => return Ok(()),
    };
    let matches = |t: &str| match t {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "number" => value.is_number(),
        "boolean" => value.is_boolean(),
        _ => true,
    };
    if !types.iter().any(|t| matches(t)) {
        let want = types
            .iter()
            .map(|t| match *t {
                "object" => "an object",
                "array" => "a list",
                "string" => "a string",
                "number" => "a number",
                "boolean" => "true or false",
                other => other,
            })
            .collect::<Vec<_>>()
            .join(" or ");
        return Err(format!("{at}: expected {want}, not {}.", kind_of(value)));
    }
    match value {
        Value::Object(m) if types.contains(&"object") => {
            let props = schema["properties"].as_object();
            for r in schema["required"].as_array().into_iter().flatten() {
                if let Some(r) = r.as_str()
                    && !m.contains_key(r)
                {
                    return Err(format!("{}: missing.", field(path, r)));
                }
            }
            for (k, v) in m {
                match props.and_then(|p| p.get(k)) {
                    Some(sub) => check(sub, v, &field(path, k))?,
                    None => match &schema["additionalProperties"] {
                        Value::Bool(false) => {
                            let known: Vec<&str> = props
                                .map(|p| p.keys().map(String::as_str).collect())
                                .unwrap_or_default();
                            return Err(format!(
                                "{}: unknown argument; expected {}.",
                                field(path, k),
                                if known.is_empty() {
                                    "none".to_string()
                                } else {
                                    known.join(", ")
                                }
                            ));
                        }
                        sub @ Value::Object(_) => check(sub, v, &field(path, k))?,
                        _ => {}
                    },
                }
            }
            Ok(())
        }
        Value::Array(items) if types.contains(&"array") => {
            for (i, v) in items.iter().enumerate() {
                check(&schema["items"], v, &format!("{at}[{i}]"))?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}
