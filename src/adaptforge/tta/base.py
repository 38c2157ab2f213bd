"""The test-time adaptation contract: typed params, what a method may read, sessions, and the runner.

A test-time method adapts a task adapter to the inputs it meets, without their labels. It is a
:class:`~adaptforge.methods.Method` registered in :data:`TTA_METHODS` whose :meth:`TtaMethod.open` returns a
:class:`Session`: the state it updates (a :class:`~adaptforge.tta.tunable.Tunable`), an Adam optimizer over
it, and :meth:`Session.adapt`, which updates on some inputs and returns their predictions.
:func:`run_tta` drives a session at one of three granularities:

* ``input``: every input alone, from the starting state, which is restored after it (MOTIA's setting);
* ``batch``: every ``batch_size`` consecutive inputs together, state restored after each batch;
* ``stream``: batches in order, state carried over (a :class:`Stream`, which can be fed in pieces); an
  automatic reset restores the starting state when the predictions collapse (one class holds more than
  ``collapse_fraction`` of the last ``reset_window`` predictions), as EATA and SAR guard against, and, for
  methods with :class:`GuardParams`, when they drift away from the unadapted model's (:class:`AnchorGuard`).

Labels of the inputs are never given to a method: a session sees texts (:class:`Inputs`, whose encoded
targets are ``-1`` so any accidental use fails) and the task's description and labels without its splits
(:class:`TtaSetup`). Only the caller scores predictions against gold labels.
"""

from __future__ import annotations

import collections
import contextlib
import time
from abc import abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ClassVar, Generic, TypeVar

import torch

from adaptforge.batching import Batch, EncodedSplit, make_batch, pad
from adaptforge.core import AdaptforgeError, LoraDelta, Registry
from adaptforge.lora.hooks import eval_mode
from adaptforge.methods import Method
from adaptforge.params import Params, param
from adaptforge.scorers import LabelInputs, Scorer
from adaptforge.tasks import Example, Task
from adaptforge.tta.tunable import Tunable

GRANULARITIES = ("input", "batch", "stream")


@dataclass(frozen=True, kw_only=True)
class TtaParams(Params):
    """Parameters every test-time method takes (a gradient method adds steps and lr: :class:`GradientParams`)."""

    reset_window: int = param(
        0, ge=0, help="stream: predictions watched for collapse; a collapse resets the state (0: never reset)"
    )
    collapse_fraction: float = param(
        0.9, gt=0, le=1, help="stream: a collapse is one class holding more than this fraction of the window"
    )
    seed: int = param(0, ge=0, help="seed of everything random in the method (initialisation, word drops, dropout)")


@dataclass(frozen=True, kw_only=True)
class GradientParams(TtaParams):
    """Adds the gradient steps and learning rate of a method that trains what it adapts."""

    steps: int = param(1, ge=1, help="gradient steps per input, batch or stream batch")
    lr: float = param(1e-3, gt=0, help="Adam learning rate of what the method updates")


ANCHOR_HELP = (
    "stream: reset when fewer than this fraction of the last anchor_window predictions agree with the unadapted "
    "model's on the same inputs (0: off)"
)


@dataclass(frozen=True, kw_only=True)
class GuardParams(GradientParams):
    """Adds the anchor guard against slow drift in a stream (:class:`AnchorGuard`)."""

    anchor_agreement: float = param(0.0, ge=0, le=1, help=ANCHOR_HELP + " (costs a forward pass per batch once moved)")
    anchor_window: int = param(32, ge=1, help="stream: predictions the anchor agreement is measured over")


def label_only(task: Task) -> Task:
    """``task`` without its splits: the description and label set a method may read, and nothing else."""
    return task.with_splits(**dict.fromkeys(task.splits))


@dataclass
class TtaSetup:
    """What a method may read: the scorer, the task's description and labels (``task`` has no splits, so
    the labels of the inputs are not there to read), the task adapter, and for some methods other library
    adapters (``candidates``, name and tensors; atlas-unsup), labelled training pools (``pool``: tasks
    whose *train* split is searched; ttt-nn) or the adapter's own training task (``source``, train split
    only: the label prior it was trained under; em-prior)."""

    scorer: Scorer
    task: Task
    adapter: LoraDelta
    candidates: Sequence[tuple[str, LoraDelta]] = ()
    pool: Sequence[Task] = ()
    source: Task | None = None

    def __post_init__(self) -> None:
        self.task = label_only(self.task)
        self.pool = [train_only(t) for t in self.pool]
        self.source = None if self.source is None else train_only(self.source)


def train_only(task: Task) -> Task:
    """``task`` with its train split only (a training pool: never the split being adapted on)."""
    return task.with_splits(**{s: None for s in task.splits if s != "train"})


@dataclass(frozen=True)
class Inputs:
    """Unlabelled inputs: their texts and token ids. ``encoded.targets`` are ``-1`` (no label is known);
    a loss that reads them fails instead of training on a made-up label."""

    texts: tuple[str, ...]
    encoded: EncodedSplit

    def __len__(self) -> int:
        return len(self.texts)

    def batch(self) -> Batch:
        return make_batch(self.encoded, range(len(self)))

    def subset(self, index: Sequence[int]) -> Inputs:
        ids = tuple(self.encoded.ids[i] for i in index)
        return Inputs(tuple(self.texts[i] for i in index), EncodedSplit(ids, (-1,) * len(ids)))


def encode_inputs(scorer: Scorer, task: Task, texts: Sequence[str]) -> Inputs:
    """Token ids of ``texts`` as the scorer builds them for ``task`` (description + text), with no labels."""
    texts = tuple(texts)
    if not task.labels:  # pragma: no cover - Task refuses an empty label set
        raise AdaptforgeError(f"task {task.name!r} has no labels")
    placeholder = [Example(text, task.labels[0]) for text in texts]  # the scorer's encode wants a label
    ids = scorer.encode(task, placeholder).ids
    return Inputs(texts, EncodedSplit(ids, (-1,) * len(ids)))


def lm_loss(scorer: Scorer, model: torch.nn.Module, texts: Sequence[str]) -> torch.Tensor:
    """Mean next-token cross-entropy of a causal LM on ``texts`` themselves (no prompt, no label): the
    self-supervised loss MOTIA and TTT-NN train on. Pads are ignored."""
    if scorer.backbone.kind != "causal":
        raise AdaptforgeError("the language-model loss needs a causal LM base (this base is an encoder)")
    tok = scorer.tokenizer
    ids = [tuple(x) for x in tok(list(texts), truncation=True, max_length=scorer.max_length)["input_ids"]]
    input_ids, mask = pad(ids, tok.pad_token_id)
    labels = input_ids.masked_fill(mask == 0, -100)
    return model(input_ids=input_ids, attention_mask=mask, labels=labels).loss


@dataclass(frozen=True)
class Step:
    """What one :meth:`Session.adapt` did: the inputs' predictions after adapting (``[n, labels]`` logits),
    how many inputs took part in an update (filters may drop some), and whether the method reset itself."""

    logits: torch.Tensor
    updated: int
    reset: bool = False


TP = TypeVar("TP", bound=TtaParams)


class Session(Generic[TP]):
    """One adaptation run: the scorer's model in eval mode (no dropout: losses are deterministic), the
    method's :class:`Tunable` entered, an Adam optimizer over it, and the starting state kept for resets.
    A context manager: everything it changed in the model is put back on exit, also after an error.
    Subclasses implement :meth:`adapt` (and :meth:`start` / :meth:`on_reset` when they keep state)."""

    def __init__(self, method: str, setup: TtaSetup, params: TP, tunable: Tunable) -> None:
        self.method = method
        self.setup = setup
        self.params = params
        self.tunable = tunable
        self.scorer = setup.scorer
        self.model = setup.scorer.backbone.model
        self.generator = torch.Generator().manual_seed(params.seed)
        self.labels: LabelInputs = setup.scorer.encode_labels(setup.task)
        self._stack: contextlib.ExitStack | None = None
        self._initial: list[torch.Tensor] = []
        self.optimizer: torch.optim.Optimizer | None = None

    def __enter__(self) -> Session[TP]:
        with contextlib.ExitStack() as stack:
            stack.enter_context(eval_mode(self.model))
            stack.enter_context(self.tunable)
            self._initial = self.tunable.snapshot()
            self.optimizer = self._new_optimizer()
            self.start()
            self._stack = stack.pop_all()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._stack is not None:
            self._stack.close()
            self._stack = None

    def _new_optimizer(self) -> torch.optim.Optimizer | None:
        """Adam over the tunable (``None`` for a gradient-free method, whose tunable has no tensors)."""
        params = self.tunable.parameters()
        if not params:
            return None
        if not isinstance(self.params, GradientParams):  # pragma: no cover - a method bug, not bad input
            raise AdaptforgeError(f"tta method {self.method!r} trains a tunable, so its params need GradientParams")
        return torch.optim.Adam(params, lr=self.params.lr)

    def start(self) -> None:  # noqa: B027 - optional hook
        """Work once the tunable is active, before the first input (ttt-nn embeds its pool here)."""

    def on_reset(self) -> None:  # noqa: B027 - optional hook
        """Forget method state kept besides the tunable (EATA's moving average, SAR's loss average)."""

    @abstractmethod
    def adapt(self, inputs: Inputs) -> Step:
        """Update on ``inputs`` (a gradient method: ``params.steps`` steps, or fewer if a filter keeps none) and
        predict them."""

    def reset(self) -> None:
        """Back to the starting state: the tunable's values, a fresh optimizer, the random stream re-seeded (so
        an input adapted alone gets the same masks wherever it comes), the method's own state."""
        self.tunable.restore(self._initial)
        self.optimizer = self._new_optimizer()
        self.generator.manual_seed(self.params.seed)
        self.on_reset()

    def at_start(self) -> bool:
        """Whether the tunable still holds its starting values (nothing updated since the last reset)."""
        return all(torch.equal(p, v) for p, v in zip(self.tunable.parameters(), self._initial, strict=True))

    @torch.no_grad()
    def source_logits(self, inputs: Inputs) -> torch.Tensor:
        """``[n, labels]`` logits of ``inputs`` at the starting state (the unadapted model); the current values
        and the optimizer's state are kept."""
        current = self.tunable.snapshot()
        self.tunable.restore(self._initial)
        try:
            return self.logits(inputs)
        finally:
            self.tunable.restore(current)

    def delta(self) -> LoraDelta | None:
        """The adapter as adapted so far (``None`` when what is updated is not an adapter: norm parameters)."""
        return self.tunable.delta()

    def logits(self, inputs: Inputs | Batch, labels: LabelInputs | None = None) -> torch.Tensor:
        """``[n, labels]`` logits under the model as it is now (hooks included); differentiable when grads are on."""
        batch = inputs.batch() if isinstance(inputs, Inputs) else inputs
        context = self.scorer.label_context(self.model, labels or self.labels)
        return self.scorer.logits(self.model, batch, context).float()

    @torch.no_grad()
    def predict(self, inputs: Inputs) -> torch.Tensor:
        return self.logits(inputs)

    def checked(self, loss: torch.Tensor) -> torch.Tensor:
        """``loss``, unless it is not finite: then the run stops with advice."""
        if not torch.isfinite(loss):
            raise AdaptforgeError(f"tta method {self.method!r}: the loss became {float(loss)}; lower --lr")
        return loss

    def update(self, loss: torch.Tensor) -> None:
        """One optimizer step on ``loss``; a non-finite loss stops the run with advice."""
        self.checked(loss)
        assert self.optimizer is not None, "a session is used inside its with block"
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()


class TtaMethod(Method[TP]):
    """A test-time adaptation method. Subclasses set ``name``, ``reference_url``, ``params_type`` and
    ``default_granularity`` and implement :meth:`open`."""

    kind = "tta method"
    params_base = TtaParams
    params_type: ClassVar[type[Params]] = TtaParams
    default_granularity: ClassVar[str] = "batch"
    needs_pool: ClassVar[bool] = False  # labelled training pools (TtaSetup.pool)

    @classmethod
    def notes(cls) -> tuple[str, ...]:
        notes = [f"default granularity {cls.default_granularity}"]
        if cls.needs_pool:
            notes.append("retrieves from training pools (--pool TASK_DIR)")
        return tuple(notes)

    def candidates_wanted(self, params: TP) -> int:
        """How many other library adapters the method mixes in (fetched by the caller into ``candidates``)."""
        return 0

    def source_wanted(self, params: TP) -> bool:
        """Whether the method reads the adapter's own training task (fetched by the caller into ``source``)."""
        return False

    def unsaved_reason(self, params: TP) -> str | None:
        """Why the adapted state cannot be stored as an adapter with these params (``None``: it can)."""
        return None

    def check(self, setup: TtaSetup, params: TP) -> None:  # noqa: B027 - optional hook
        """Method-specific checks of the setup (base kind, pools) before any work."""

    @abstractmethod
    def open(self, setup: TtaSetup, params: TP) -> Session[TP]:
        """A new session (enter it with ``with``) adapting ``setup.adapter``."""


TTA_METHODS: Registry[type[TtaMethod[Any]]] = Registry(
    "tta method",
    base=TtaMethod,
    entries={
        "atlas-unsup": "adaptforge.tta.atlas:AtlasUnsup",
        "tent": "adaptforge.tta.entropy:Tent",
        "eata": "adaptforge.tta.entropy:Eata",
        "sar": "adaptforge.tta.entropy:Sar",
        "input-lora": "adaptforge.tta.input_lora:InputLora",
        "ttt-nn": "adaptforge.tta.neighbours:TttNn",
        "em-prior": "adaptforge.tta.prior:EmPrior",
        "pseudo": "adaptforge.tta.pseudo:Pseudo",
    },
)


class CollapseWatch:
    """The last ``window`` predictions; :meth:`collapsed` when one class holds more than ``fraction`` of a
    full window (then the window starts over)."""

    def __init__(self, window: int, fraction: float) -> None:
        self.window = window
        self.fraction = fraction
        self._seen: collections.deque[int] = collections.deque(maxlen=max(window, 1))

    def collapsed(self, predictions: Sequence[int]) -> bool:
        if self.window == 0:
            return False
        self._seen.extend(predictions)
        if len(self._seen) < self.window:
            return False
        top = collections.Counter(self._seen).most_common(1)[0][1]
        if top > self.fraction * self.window:
            self._seen.clear()
            return True
        return False


class AnchorGuard:
    """A label-free guard against slow drift: the adapted model's predictions are compared with the unadapted
    (starting) model's on the same inputs; when fewer than ``agreement`` of the pairs seen since the last reset
    (the last ``window`` of them) agree, :meth:`drifted` says so and the window starts over.

    Why: EATA's and SAR's own guards see only the adapted model. A collapse check (one class > 90% of a window)
    and SAR's recovery rule (reset when the moving average of the reliable inputs' entropy falls below e0,
    Niu et al. 2023, https://arxiv.org/abs/2302.12400, ``sar.py``: ``ema < 0.2``) both wait for a degenerate
    model, and a model that moves some predictions to wrong classes while staying confident and spread over
    the classes trips neither. EATA's Fisher regulariser (Niu et al. 2022, https://arxiv.org/abs/2204.02610,
    ``main.py``: squared gradients of the model's own pseudo-label cross-entropy on in-distribution inputs,
    penalty ``fisher_alpha * F * (theta - theta0)^2``) slows the drift in parameter space but needs
    in-distribution inputs and cannot say when predictions have changed. The anchor measures the drift where it
    does harm, in the predictions, on the inputs the stream meets, with no labels and no source data. Every
    changed prediction is a disagreement, so a shift of the predicted-class marginal is caught as well.
    The price is a forward pass at the starting state per batch once the state has moved (counted in the cost).
    """

    def __init__(self, agreement: float, window: int) -> None:
        self.agreement = agreement
        self._pairs: collections.deque[bool] = collections.deque(maxlen=window)

    def drifted(self, adapted: Sequence[int], source: Sequence[int]) -> bool:
        self._pairs.extend(a == s for a, s in zip(adapted, source, strict=True))
        if self._pairs and sum(self._pairs) < self.agreement * len(self._pairs):
            self._pairs.clear()
            return True
        return False

    def clear(self) -> None:
        self._pairs.clear()


@dataclass
class Chunk:
    """Predictions of some inputs with what the adaptation cost: seconds, resets (of which ``drifts`` by the
    anchor guard), inputs that updated."""

    logits: torch.Tensor
    seconds: float
    resets: int
    updated: int
    drifts: int = 0


class Stream:
    """Stream-mode adaptation fed in pieces: batches of ``batch_size`` in order, state carried over from
    one :meth:`feed` to the next (a stream fed in two parts gives what one feed of both gives, when the
    first part is a whole number of batches), reset when the predictions collapse or, with ``anchor_agreement``
    on, drift from the unadapted model's (:class:`AnchorGuard`). The batch that reveals a drift is predicted by
    the starting state (its logits are at hand: the guard computed them), the state is reset, and the stream
    goes on from there."""

    def __init__(self, session: Session, batch_size: int) -> None:
        if batch_size < 1:
            raise AdaptforgeError(f"--batch-size must be >= 1, got {batch_size}")
        self.session = session
        self.batch_size = batch_size
        self.watch = CollapseWatch(session.params.reset_window, session.params.collapse_fraction)
        p = session.params
        self.guard: AnchorGuard | None = None
        if isinstance(p, GuardParams) and p.anchor_agreement > 0:
            self.guard = AnchorGuard(p.anchor_agreement, p.anchor_window)
        self.resets = 0
        self.drifts = 0

    def feed(self, inputs: Inputs, on_batch: Callable[[int], None] | None = None) -> Chunk:
        parts, seconds, resets, updated, drifts = [], 0.0, 0, 0, 0
        for start in range(0, len(inputs), self.batch_size):
            batch = inputs.subset(range(start, min(start + self.batch_size, len(inputs))))
            t0 = time.perf_counter()
            step = self.session.adapt(batch)
            logits = step.logits
            predicted = logits.argmax(-1).tolist()
            drifted = False
            if self.guard is not None:
                # at the starting state (and no reset inside adapt) the prediction already is the source's
                same = self.session.at_start() and not step.reset
                source = logits if same else self.session.source_logits(batch)
                drifted = self.guard.drifted(predicted, source.argmax(-1).tolist())
                if drifted:
                    logits = source
            collapsed = not drifted and self.watch.collapsed(predicted)
            if collapsed or drifted:
                self.session.reset()
            if (collapsed or step.reset) and self.guard is not None:  # a drift has cleared the guard already
                self.guard.clear()
            seconds += time.perf_counter() - t0
            resets += int(collapsed or drifted or step.reset)
            drifts += int(drifted)
            updated += step.updated
            parts.append(logits.detach())
            if on_batch:
                on_batch(len(batch))
        self.resets += resets
        self.drifts += drifts
        return Chunk(_cat(parts, inputs, self.session), seconds, resets, updated, drifts)


def _cat(parts: list[torch.Tensor], inputs: Inputs, session: Session) -> torch.Tensor:
    return torch.cat(parts) if parts else torch.empty(len(inputs), len(session.labels.labels))


def units(n: int, granularity: str, batch_size: int) -> list[range]:
    """Consecutive index ranges adapted together: one input each, or batches of ``batch_size`` in order."""
    size = 1 if granularity == "input" else batch_size
    return [range(i, min(i + size, n)) for i in range(0, n, size)]


def check_granularity(granularity: str, batch_size: int) -> None:
    if granularity not in GRANULARITIES:
        raise AdaptforgeError(f"--granularity must be one of {', '.join(GRANULARITIES)}, got {granularity!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise AdaptforgeError(f"--batch-size must be a positive integer, got {batch_size!r}")


@dataclass
class TtaRun:
    """A method run over inputs: their predictions, the cost (seconds adapting and predicting, seconds opening
    the session), resets that fired (``drifts`` of them by the anchor guard), inputs that updated, and in
    stream mode the adapter at the end."""

    logits: torch.Tensor
    granularity: str
    batch_size: int
    seconds: float
    setup_seconds: float
    resets: int
    updated: int
    units: int
    delta: LoraDelta | None = None
    drifts: int = 0


def run_tta(
    method: TtaMethod[Any],
    setup: TtaSetup,
    texts: Sequence[str],
    params: TtaParams | Mapping[str, Any] | None = None,
    *,
    granularity: str | None = None,
    batch_size: int = 16,
    on_unit: Callable[[int], None] | None = None,
) -> TtaRun:
    """Adapt with ``method`` over ``texts`` (unlabelled) at ``granularity`` (default: the method's) and return
    every input's prediction after adaptation, in the order given."""
    typed: TtaParams = method.parse_params(params)
    granularity = granularity or method.default_granularity
    check_granularity(granularity, batch_size)
    method.check(setup, typed)
    inputs = encode_inputs(setup.scorer, setup.task, texts)
    t0 = time.perf_counter()
    with method.open(setup, typed) as session:
        setup_seconds = time.perf_counter() - t0
        if granularity == "stream":
            stream = Stream(session, batch_size)
            chunk = stream.feed(inputs, on_unit)
            return TtaRun(
                chunk.logits,
                granularity,
                batch_size,
                chunk.seconds,
                setup_seconds,
                chunk.resets,
                chunk.updated,
                len(units(len(inputs), granularity, batch_size)),
                session.delta(),
                chunk.drifts,
            )
        parts, seconds, updated, resets = [], 0.0, 0, 0
        ranges = units(len(inputs), granularity, batch_size)
        for unit in ranges:
            t1 = time.perf_counter()
            step = session.adapt(inputs.subset(unit))
            session.reset()
            seconds += time.perf_counter() - t1
            parts.append(step.logits.detach())
            updated += step.updated
            resets += int(step.reset)
            if on_unit:
                on_unit(len(unit))
    return TtaRun(
        _cat(parts, inputs, session), granularity, batch_size, seconds, setup_seconds, resets, updated, len(ranges)
    )
