"""NegMAS negotiators as remote agents over Concierge's negotiation WebSocket (issue #14).

Each NegMAS negotiator (BoulwareTBNegotiator, LinearTBNegotiator, ConcederTBNegotiator,
NaiveTitForTatNegotiator, MiCRONegotiator, AspirationNegotiator) plays a buyer against the
brand's agent: a local SAOMechanism runs the buyer against a placeholder negotiator whose moves
are the server's, fed over the real WebSocket (upgrade signed per RFC 9421, offers and accepts
signed with the agent's Ed25519 key over their RFC 8785 canonical bytes). Every deal is then
verified here with the two public keys alone.

With --compare, the same scenarios are also played locally with NegMAS's own
AspirationNegotiator on the brand's side (same utility, same floor), for the benchmark.

Usage: negmas_agent.py CONFIG.json   (prints one JSON object on its last line)
CONFIG: {"base": "http://127.0.0.1:PORT", "key_seed": b64, "key_id", "token", "service_key": b64url,
         "variant_id", "quantity", "list_price", "floor", "cost", "ship_price", "ship_cost",
         "shipping", "budgets": [minor units], "negotiators": [names], "n_steps": 10,
         "compare": bool}
"""

import base64
import hashlib
import json
import secrets
import sys
import time
import warnings

warnings.filterwarnings("ignore")

from cryptography.hazmat.primitives.asymmetric.ed25519 import (  # noqa: E402
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from negmas import ResponseType, SAOMechanism, make_issue  # noqa: E402
from negmas.preferences import LinearAdditiveUtilityFunction  # noqa: E402
from negmas.sao import (  # noqa: E402
    AspirationNegotiator,
    BoulwareTBNegotiator,
    ConcederTBNegotiator,
    LinearTBNegotiator,
    MiCRONegotiator,
    NaiveTitForTatNegotiator,
    SAONegotiator,
)
from websockets.sync.client import connect  # noqa: E402

NEGOTIATORS = {
    "boulware": BoulwareTBNegotiator,
    "linear": LinearTBNegotiator,
    "conceder": ConcederTBNegotiator,
    "tit_for_tat": NaiveTitForTatNegotiator,
    "micro": MiCRONegotiator,
    "aspiration": AspirationNegotiator,
}


def jcs(obj) -> bytes:
    # RFC 8785 for objects of strings, integers, booleans, nested objects/arrays.
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sha(obj) -> str:
    return "sha256:" + hashlib.sha256(jcs(obj)).hexdigest()


def b64url_decode(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


class Agent:
    def __init__(self, cfg):
        self.cfg = cfg
        self.key = Ed25519PrivateKey.from_private_bytes(base64.b64decode(cfg["key_seed"]))
        self.key_id = cfg["key_id"]

    def sign(self, frame: dict) -> dict:
        frame = dict(frame)
        frame["sig"] = base64.b64encode(self.key.sign(jcs(frame))).decode()
        return frame

    def upgrade_headers(self, http_url: str) -> dict:
        # RFC 9421 over @method and @target-uri (no body), as Concierge verifies.
        created = int(time.time())
        nonce = secrets.token_urlsafe(12)
        params = (
            f'("@method" "@target-uri");created={created};keyid="{self.key_id}";'
            f'nonce="{nonce}";alg="ed25519"'
        )
        base = f'"@method": GET\n"@target-uri": {http_url}\n"@signature-params": {params}'
        sig = base64.b64encode(self.key.sign(base.encode())).decode()
        return {
            "Signature-Input": f"sig1={params}",
            "Signature": f"sig1=:{sig}:",
            "Authorization": f"Bearer {self.cfg['token']}",
        }

    def socket(self):
        http = self.cfg["base"].rstrip("/") + "/agent/v1/negotiations/ws"
        ws = "ws" + http[len("http"):]
        return connect(ws, additional_headers=self.upgrade_headers(http), compression=None)


def buyer_ufun(issue, lo, hi, budget):
    table = {p: (hi - p) / (hi - lo) for p in issue.all}
    return LinearAdditiveUtilityFunction(
        values={"price": table}, weights={"price": 1.0}, issues=[issue],
        reserved_value=(hi - budget) / (hi - lo),
    )


def brand_utility(cfg, price):
    q = cfg["quantity"]
    ship = cfg["ship_price"] - cfg["ship_cost"]
    return (q * (price - cfg["cost"]) + ship) / (q * (cfg["list_price"] - cfg["cost"]) + ship)


class Remote(SAONegotiator):
    """The brand, as the server plays it: each buyer offer goes over the socket; the server's
    answer is this negotiator's response and next proposal."""

    def __init__(self, ws, agent, negotiation_id, cfg, **kwargs):
        super().__init__(**kwargs)
        self.ws, self.agent, self.nid, self.cfg = ws, agent, negotiation_id, cfg
        self.next_round = 1
        self.brand_offer = None  # (price, terms)
        self.deal = None
        self.ended = None
        self.frames = 0

    def terms(self, price):
        return {
            "lines": [{"variant_id": self.cfg["variant_id"], "quantity": self.cfg["quantity"],
                       "unit_price": int(price)}],
            "shipping": self.cfg["shipping"],
            "currency": "USD",
        }

    def exchange(self, frame):
        self.ws.send(json.dumps(frame))
        self.frames += 1
        reply = json.loads(self.ws.recv(timeout=30))
        if reply["type"] == "error":
            raise RuntimeError(f"server error: {reply}")
        return reply

    def respond(self, state, source=None):
        offer = state.current_offer
        if offer is None:
            return ResponseType.REJECT_OFFER
        reply = self.exchange(self.agent.sign({
            "type": "offer", "negotiation_id": self.nid, "round": self.next_round,
            "terms": self.terms(offer[0]),
        }))
        if reply["type"] == "offer":
            self.brand_offer = (reply["terms"]["lines"][0]["unit_price"], reply["terms"])
            self.next_round = reply["round"] + 1
            return ResponseType.REJECT_OFFER
        if reply["type"] == "deal":
            self.deal = reply
            return ResponseType.ACCEPT_OFFER
        self.ended = reply.get("reason")
        return ResponseType.END_NEGOTIATION

    def propose(self, state, dest=None):
        if self.brand_offer is None:
            return None
        return (self.brand_offer[0],)

    def accept_brand_offer(self):
        reply = self.exchange(self.agent.sign({
            "type": "accept", "negotiation_id": self.nid, "round": self.next_round,
            "terms_hash": sha(self.brand_offer[1]),
        }))
        if reply["type"] == "deal":
            self.deal = reply
        else:
            self.ended = reply.get("reason")

    def end(self):
        if self.deal is None and self.ended is None:
            reply = self.exchange({"type": "end", "negotiation_id": self.nid, "reason": "buyer walked away"})
            self.ended = reply.get("reason")


def verify_deal(cfg, agent, d):
    deal = d["deal"]
    brand = Ed25519PublicKey.from_public_bytes(b64url_decode(cfg["service_key"]))
    brand.verify(base64.b64decode(d["brand_sig"]), jcs(deal))  # raises when bad
    t = deal["terms"]
    if deal["agent_move"] == "accept":
        frame = {"type": "accept", "negotiation_id": deal["negotiation_id"],
                 "round": deal["agent_round"], "terms_hash": sha(t)}
    else:
        frame = {"type": "offer", "negotiation_id": deal["negotiation_id"],
                 "round": deal["agent_round"], "terms": t}
    agent.key.public_key().verify(base64.b64decode(d["agent_sig"]), jcs(frame))
    assert d["deal_hash"] == sha(deal), "deal_hash"
    assert deal["agent_key_id"] == agent.key_id
    return True


def play_remote(cfg, agent, ws, name, budget, request_id):
    lo, hi = cfg["list_price"] // 2, cfg["list_price"]
    ws.send(json.dumps({"type": "open", "request_id": request_id,
                        "items": [{"variant_id": cfg["variant_id"], "quantity": cfg["quantity"]}],
                        "max_rounds": 2 * cfg["n_steps"], "deadline_ms": 30000}))
    opened = json.loads(ws.recv(timeout=30))
    assert opened["type"] == "opened", opened
    issue = make_issue(values=list(range(lo, hi + 1)), name="price")
    mech = SAOMechanism(issues=[issue], n_steps=cfg["n_steps"])
    buyer = NEGOTIATORS[name](name=f"buyer-{name}")
    remote = Remote(ws, agent, opened["negotiation_id"], cfg, name="brand")
    mech.add(buyer, ufun=buyer_ufun(issue, lo, hi, budget))
    mech.add(remote, ufun=buyer_ufun(issue, lo, hi, budget))  # the server decides; unused
    started = time.perf_counter()
    state = mech.run()
    if remote.deal is None and remote.ended is None:
        if state.agreement is not None and remote.brand_offer is not None \
                and state.agreement[0] == remote.brand_offer[0]:
            remote.accept_brand_offer()
        else:
            remote.end()
    out = {"negotiator": name, "budget": budget, "agreement": remote.deal is not None,
           "rounds": remote.next_round - 1, "frames": remote.frames,
           "seconds": time.perf_counter() - started, "ended": remote.ended}
    if remote.deal is not None:
        price = remote.deal["deal"]["terms"]["lines"][0]["unit_price"]
        out.update(price=price, total=remote.deal["deal"]["total"],
                   verified=verify_deal(cfg, agent, remote.deal),
                   deal_id=remote.deal["deal"]["deal_id"],
                   utility=brand_utility(cfg, price),
                   over_budget=price > budget)
    return out


def play_local(cfg, name, budget):
    """NegMAS's AspirationNegotiator on the brand's side, same scenario."""
    lo, hi = cfg["list_price"] // 2, cfg["list_price"]
    issue = make_issue(values=list(range(lo, hi + 1)), name="price")
    mech = SAOMechanism(issues=[issue], n_steps=cfg["n_steps"])
    table = {p: brand_utility(cfg, p) for p in issue.all}
    brand_ufun = LinearAdditiveUtilityFunction(
        values={"price": table}, weights={"price": 1.0}, issues=[issue],
        reserved_value=brand_utility(cfg, cfg["floor"]))
    mech.add(NEGOTIATORS[name](name=f"buyer-{name}"), ufun=buyer_ufun(issue, lo, hi, budget))
    mech.add(AspirationNegotiator(name="brand"), ufun=brand_ufun)
    state = mech.run()
    out = {"negotiator": name, "budget": budget, "agreement": state.agreement is not None}
    if state.agreement is not None:
        price = state.agreement[0]
        out.update(price=price, utility=brand_utility(cfg, price), below_floor=price < cfg["floor"])
    return out


def summary(runs):
    deals = [r for r in runs if r["agreement"]]
    return {
        "runs": len(runs),
        "agreements": len(deals),
        "agreement_rate": len(deals) / max(1, len(runs)),
        "mean_brand_utility": sum(r["utility"] for r in deals) / max(1, len(deals)),
    }


def main():
    cfg = json.load(open(sys.argv[1]))
    agent = Agent(cfg)
    remote_runs, local_runs = [], []
    run_id = secrets.token_hex(4)
    with agent.socket() as ws:
        for i, budget in enumerate(cfg["budgets"]):
            for name in cfg["negotiators"]:
                remote_runs.append(play_remote(cfg, agent, ws, name, budget, f"{run_id}-{name}-{i}"))
                if cfg.get("compare"):
                    local_runs.append(play_local(cfg, name, budget))
    result = {"concierge": summary(remote_runs), "runs": remote_runs}
    if cfg.get("compare"):
        result["negmas_aspiration"] = summary(local_runs)
        result["local_runs"] = local_runs
    print(json.dumps(result))


if __name__ == "__main__":
    main()
