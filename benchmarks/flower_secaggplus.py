"""Flower SecAgg+ in-process: total CPU of one round (all clients + server).

Drives Flower's OWN SecAgg+ code, unmodified: the client-side ``secaggplus_mod``
(``flwr.client.mod``) wrapped around a legacy ``NumPyClient`` in a ``ClientApp``, and the
server-side ``SecAggPlusWorkflow`` (``flwr.server.workflow``) with a ``LegacyContext``
(``FedAvg``, ``SimpleClientManager``), exactly as Flower's secure-aggregation example wires
them. The only piece written here is :class:`InProcessGrid`, a ``Grid`` whose
``send_and_receive`` serialises every message to bytes, hands the bytes to the
destination's ``ClientApp`` (which deserialises them, runs, and serialises its reply) and
deserialises the reply: no network, no SuperLink, no SuperNode.

Two serialisations (``--transport``), both Flower's own:

* ``proto`` (default): one ``ProtoMessage`` per message via ``flwr.common.serde``
  (``message_to_proto(...).SerializeToString()`` / ``message_from_proto(FromString(...))``).
  The cheaper of the two, so the conservative choice when comparing against Flower.
* ``objects``: what flwr's own gRPC/HTTP transports do since 1.20: the message id is the
  SHA-256 object id, the metadata goes as a ``ProtoMessage`` and the content as
  content-addressed "inflatable" objects (``deflate`` / ``inflate``); the receiver checks
  each object's content hash (the SuperLink's object store does that on every push) and
  ``inflate_object_from_contents`` rebuilds the message. One hop only: the SuperLink's
  and SuperNode's own relaying, storing and re-hashing are not counted.

CPU (``time.process_time``, so that the thread pools of flwr's Shamir sharing are counted)
is charged to the clients for everything a client does with a message (deserialise, run
the ``ClientApp`` with its mods, serialise the reply) and to the server for the rest of the
workflow (building messages, serialising them, deserialising replies, the stages' own
work, ``FedAvg.aggregate_fit``). Input generation is outside every timed region. Flower's
primitives are wrapped (by name, in the two modules that call them) only to attribute
CPU; they run unchanged. Prints one JSON object on stdout and nothing else. Run with the
benchmark-only venv (``make bench-flower`` creates it)::

    .venv-flwr/bin/python benchmarks/flower_secaggplus.py --n 10 --d 1000000 --repeat 3

This file is excluded from the main project's mypy run (flwr lives only in .venv-flwr);
it type-checks with ``.venv/bin/mypy --strict --python-executable .venv-flwr/bin/python``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import json
import platform
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any, ParamSpec, TypeVar, cast

import flwr
import numpy as np
import numpy.typing as npt
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.client import Client, NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import Config, NDArrays, Scalar, parameters_to_ndarrays
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.common.serde import message_from_proto, message_to_proto
from flwr.compat.common.recorddict_compat import arrayrecord_to_parameters
from flwr.proto.message_pb2 import Message as ProtoMessage
from flwr.server import ServerConfig, SimpleClientManager
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.strategy import FedAvg
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.server.workflow.secure_aggregation import secaggplus_workflow as workflow_module
from flwr.serverapp.grid import Grid
from flwr.supercore.inflatable.inflatable_object import (
    get_all_nested_objects,
    get_object_id,
    no_object_id_recompute,
)
from flwr.supercore.inflatable.inflatable_utils import (
    inflate_object_from_contents,
    validate_object_content,
)
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

RUN_ID = 1

#: CPU seconds by "client.<what>" / "server.<what>"; reset before every round.
CPU: defaultdict[str, float] = defaultdict(float)
#: CPU seconds of all client calls, by workflow stage; reset before every round.
CLIENT_BY_STAGE: defaultdict[str, float] = defaultdict(float)
#: Bytes on the wire (serialised), server -> clients and clients -> server.
BYTES: defaultdict[str, int] = defaultdict(int)


P = ParamSpec("P")
R = TypeVar("R")


def _charged(key: str, fn: Callable[P, R]) -> Callable[P, R]:
    """``fn`` unchanged, its process CPU added to ``CPU[key]``."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        start = time.process_time()
        try:
            return fn(*args, **kwargs)
        finally:
            CPU[key] += time.process_time() - start

    return wrapper


#: Flower's primitives as the mod and the workflow import them (wrapped only to attribute CPU).
_MOD_PRIMITIVES = (
    "generate_key_pairs",
    "generate_shared_key",
    "create_shares",
    "encrypt",
    "decrypt",
    "quantize",
    "pseudo_rand_gen",
    "parameters_addition",
    "parameters_subtraction",
    "parameters_mod",
    "parameters_multiply",
    "ndarray_to_bytes",
    "parameters_to_ndarrays",
)
_WORKFLOW_PRIMITIVES = (
    "combine_shares",
    "generate_shared_key",
    "pseudo_rand_gen",
    "dequantize",
    "parameters_addition",
    "parameters_subtraction",
    "parameters_mod",
    "bytes_to_ndarray",
)
_INSTRUMENTED = False
# The package re-exports the function under the module's name: fetch the module itself.
mod_module = importlib.import_module("flwr.client.mod.secure_aggregation.secaggplus_mod")


def instrument() -> None:
    """Attribute CPU of Flower's primitives (once; behaviour unchanged)."""
    global _INSTRUMENTED  # noqa: PLW0603
    if _INSTRUMENTED:
        return
    for name in _MOD_PRIMITIVES:
        setattr(mod_module, name, _charged(f"client.{name}", getattr(mod_module, name)))
    for name in _WORKFLOW_PRIMITIVES:
        fn = getattr(workflow_module, name)
        setattr(workflow_module, name, _charged(f"server.{name}", fn))
    _INSTRUMENTED = True


# --- serialisation, as flwr's transports do it ------------------------------------------


Wire = tuple[bytes, dict[str, bytes]]


def to_wire(msg: Message, transport: str) -> Wire:
    """Serialise ``msg`` and give it its message id (as the SuperLink would)."""
    if transport == "proto":
        msg.metadata.__dict__["_message_id"] = str(uuid.uuid4())
        return message_to_proto(msg).SerializeToString(), {}
    # flwr >= 1.20 (HttpGrid / gRPC): id = object id; metadata and content objects apart.
    with no_object_id_recompute():
        msg.metadata.__dict__["_message_id"] = msg.object_id
        objects = get_all_nested_objects(msg)
        head = ProtoMessage(metadata=message_to_proto(msg).metadata).SerializeToString()
        return head, {object_id: obj.deflate() for object_id, obj in objects.items()}


def from_wire(wire: Wire, transport: str) -> Message:
    """Deserialise what :func:`to_wire` produced (checking object hashes for ``objects``)."""
    head, contents = wire
    if transport == "proto":
        return message_from_proto(ProtoMessage.FromString(head))
    message_id = ProtoMessage.FromString(head).metadata.message_id
    for object_id, content in contents.items():
        validate_object_content(content)
        if get_object_id(content) != object_id:
            raise ValueError(f"object {object_id} does not match its content")
    msg = cast(Message, inflate_object_from_contents(message_id, dict(contents)))
    msg.metadata.__dict__["_message_id"] = message_id
    return msg


def wire_size(wire: Wire) -> int:
    """Bytes of one serialised message."""
    return len(wire[0]) + sum(len(c) for c in wire[1].values())


# --- the clients -------------------------------------------------------------------------


class VectorClient(NumPyClient):
    """A client whose "training" returns its fixed model update (one float32 array)."""

    def __init__(self, update: npt.NDArray[np.float32]) -> None:
        self.update = update

    def fit(self, parameters: NDArrays, config: Config) -> tuple[NDArrays, int, dict[str, Scalar]]:
        del parameters, config
        return [self.update], 1, {}


def _inner_app_mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    """Innermost mod: charge the legacy handler + ``fit`` (not SecAgg+ work) separately."""
    start = time.process_time()
    try:
        return call_next(msg, ctxt)
    finally:
        CPU["client.inner_app (legacy handler + fit)"] += time.process_time() - start


def make_client_app(update: npt.NDArray[np.float32]) -> ClientApp:
    """The ClientApp of Flower's secure-aggregation example, with our fixed update."""

    def client_fn(context: Context) -> Client:
        del context
        return VectorClient(update).to_client()

    return ClientApp(client_fn=client_fn, mods=[secaggplus_mod, _inner_app_mod])


# --- the grid ----------------------------------------------------------------------------


class InProcessGrid(Grid):
    """Routes each message, serialised, to an in-process ClientApp; times the clients."""

    def __init__(self, apps: dict[int, ClientApp], transport: str) -> None:
        self.apps = apps
        self.transport = transport
        self.contexts = {
            node_id: Context(
                run_id=RUN_ID,
                node_id=node_id,
                node_config={},
                state=RecordDict(),
                run_config={},
            )
            for node_id in apps
        }
        self._run = Run.create_empty(RUN_ID)
        self.stage = "?"
        self.client_cpu = 0.0

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.apps)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        raise NotImplementedError("SecAggPlusWorkflow only uses send_and_receive")

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        raise NotImplementedError("SecAggPlusWorkflow only uses send_and_receive")

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        del timeout
        replies = []
        for msg in messages:
            start = time.process_time()
            wire = to_wire(msg, self.transport)
            CPU["server.transport"] += time.process_time() - start
            BYTES["server_to_clients"] += wire_size(wire)
            node_id = msg.metadata.dst_node_id
            start = time.process_time()
            received = from_wire(wire, self.transport)
            app_start = time.process_time()
            reply = self.apps[node_id](received, self.contexts[node_id])
            app_end = time.process_time()
            reply_wire = to_wire(reply, self.transport)
            spent = time.process_time() - start
            CPU["client.transport"] += spent - (app_end - app_start)
            self.client_cpu += spent
            CLIENT_BY_STAGE[self.stage] += spent
            BYTES["clients_to_server"] += wire_size(reply_wire)
            start = time.process_time()
            replies.append(from_wire(reply_wire, self.transport))
            CPU["server.transport"] += time.process_time() - start
        return replies


# --- one round ---------------------------------------------------------------------------


STAGES = ("setup_stage", "share_keys_stage", "collect_masked_vectors_stage", "unmask_stage")


def one_round(
    inputs: list[npt.NDArray[np.float32]],
    num_shares: int,
    threshold: int,
    transport: str,
    seed: int,
) -> dict[str, Any]:
    """Run one SecAgg+ round among ``len(inputs)`` clients; CPU, wall and the aggregate."""
    n = len(inputs)
    # What flwr.server.compat.app does before running a legacy workflow in the ServerApp.
    TaskIdentity.task_id = 1
    TaskIdentity.run_id = RUN_ID
    TaskIdentity.node_id = SUPERLINK_NODE_ID
    rng = np.random.default_rng(seed)
    node_ids = [int(x) for x in rng.integers(2, 1 << 62, size=n)]
    grid = InProcessGrid(
        {nid: make_client_app(update) for nid, update in zip(node_ids, inputs, strict=True)},
        transport,
    )
    strategy = FedAvg(
        fraction_fit=1.0,
        fraction_evaluate=0.0,
        min_fit_clients=n,
        min_available_clients=n,
        accept_failures=False,
    )
    context = LegacyContext(
        Context(run_id=RUN_ID, node_id=0, node_config={}, state=RecordDict(), run_config={}),
        config=ServerConfig(num_rounds=1),
        strategy=strategy,
        client_manager=SimpleClientManager(),
    )
    for nid in node_ids:
        context.client_manager.register(GridClientProxy(node_id=nid, grid=grid, run_id=RUN_ID))
    # No global model goes down with the FitIns: the clients' updates are fixed vectors,
    # and our round distributes no model either.
    context.state.array_records[MAIN_PARAMS_RECORD] = ArrayRecord()
    context.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord(
        {WorkflowKey.CURRENT_ROUND: 1, WorkflowKey.START_TIME: time.time()}
    )
    # max_weight = 1 = every client's num_examples: full 2^22 quantisation resolution.
    workflow = SecAggPlusWorkflow(
        num_shares=num_shares, reconstruction_threshold=threshold, max_weight=1.0
    )
    # Time the stages (the workflow calls them through self) and FedAvg.aggregate_fit.
    server_by_stage: dict[str, float] = {}
    for name in STAGES:
        stage_fn = getattr(workflow, name)

        def timed(
            g: Grid,
            c: LegacyContext,
            s: Any,
            _fn: Callable[..., bool] = stage_fn,
            _name: str = name,
        ) -> bool:
            grid.stage = _name
            before_clients = grid.client_cpu
            start = time.process_time()
            ok = _fn(g, c, s)
            total = time.process_time() - start
            server_by_stage[_name] = total - (grid.client_cpu - before_clients)
            return ok

        setattr(workflow, name, timed)
    aggregate_fit = strategy.aggregate_fit
    strategy.aggregate_fit = _charged(  # type: ignore[method-assign]
        "server.strategy.aggregate_fit (FedAvg re-averages n copies)", aggregate_fit
    )

    CPU.clear()
    CLIENT_BY_STAGE.clear()
    BYTES.clear()
    wall = time.perf_counter()
    cpu = time.process_time()
    workflow(grid, context)
    cpu = time.process_time() - cpu
    wall = time.perf_counter() - wall

    # The round's output: the parameters FedAvg wrote back into the server context.
    record = context.state.array_records[MAIN_PARAMS_RECORD]
    result = parameters_to_ndarrays(arrayrecord_to_parameters(record, keep_input=True))
    clients = grid.client_cpu
    server = cpu - clients
    by_stage = {
        name: {"clients_s": CLIENT_BY_STAGE[name], "server_s": server_by_stage[name]}
        for name in STAGES
        if name in server_by_stage
    }
    strategy_s = CPU["server.strategy.aggregate_fit (FedAvg re-averages n copies)"]
    inner_s = CPU["client.inner_app (legacy handler + fit)"]
    return {
        "cpu_clients_s": clients,
        "cpu_server_s": server,
        "cpu_total_s": cpu,
        "cpu_per_client_ms_mean": 1e3 * clients / n,
        "cpu_total_secagg_only_s": cpu - strategy_s - inner_s,
        "wall_s": wall,
        "cpu_by_stage_s": by_stage,
        "cpu_by_primitive_s": dict(sorted(CPU.items())),
        "bytes": dict(BYTES),
        "aggregate": result,
    }


def measure(n: int, d: int, repeat: int, transport: str, threshold: int | None) -> dict[str, Any]:
    """Best of ``repeat`` rounds (by total CPU), with the aggregate checked every time."""
    num_shares = n  # complete graph: every client shares with all n - 1 others
    if threshold is None:
        threshold = max(2, (2 * n) // 3 + 1)  # the same T as our secagg default
    rng = np.random.default_rng(12345)
    inputs = [rng.uniform(-1.0, 1.0, size=d).astype(np.float32) for _ in range(n)]
    expected = np.mean(np.stack(inputs).astype(np.float64), axis=0)
    step = 2 * 8.0 / 4194304  # 2 * clipping_range / quantization_range (defaults)
    best: dict[str, Any] | None = None
    for attempt in range(repeat):
        row = one_round(inputs, num_shares, threshold, transport, seed=attempt)
        (aggregate,) = row.pop("aggregate")
        error = float(np.max(np.abs(aggregate - expected)))
        if aggregate.shape != (d,) or not error <= step:
            raise AssertionError(f"aggregate off by {error} (quantisation step {step})")
        row["max_abs_error_vs_mean"] = error
        if best is None or row["cpu_total_s"] < best["cpu_total_s"]:
            best = row
    assert best is not None
    return {
        "flwr": flwr.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "n": n,
        "d": d,
        "num_shares": num_shares,
        "reconstruction_threshold": threshold,
        "transport": transport,
        "repeat": repeat,
        "quantisation_step": step,
        "mask_prg": "numpy RandomState (MT19937), seeded with 32 bits (XOR-fold of the key)",
        **best,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=10)
    parser.add_argument("--d", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threshold", type=int, default=None, help="default ⌊2n/3⌋ + 1")
    parser.add_argument("--transport", choices=("proto", "objects"), default="proto")
    args = parser.parse_args()
    instrument()
    with contextlib.redirect_stdout(sys.stderr):  # stdout carries the JSON only
        result = measure(args.n, args.d, args.repeat, args.transport, args.threshold)
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
