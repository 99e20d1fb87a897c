"""The one object that knows a trainer's batches: :class:`BatchAdapter`.

An adapter says five things about one trainer's batches and nothing else (MONAI's
``prepare_batch`` idea: the batch anatomy is one object handed to the engine):

==================  =====================================================================
``inputs(b)``       the input tensor ``[B, ...]`` the attack perturbs
``ids(b)``          one stable id per sample (margins are keyed by it), or None
``with_inputs(b, x)``  the batch with input ``x``; ``x`` may hold k*B rows (clean and noisy
                    rows stacked, or the evaluation's noise levels): targets are repeated
``output_terms(b, out)``  per-sample loss terms ``[B, K]`` of a model output the trainer
                    computed, from the trainer's OWN loss objects
``bind_loss(b, model)``  the same terms as a function of the input (the attack
                    objective), plus the trainer's scalar loss of one forward
==================  =====================================================================

The same object serves training, ``amat calibrate`` and ``amat eval``, so a trainer states
its loss once. Hosts that know their trainer (nnU-Net, Ultralytics) build their adapter;
generic hosts (:class:`~amat_hooks.loop.AdversarialLoop`, ``amat run``) ask the plugins once,
through the ``amat_adapter`` hook. PGD, margins and thresholds are never an adapter's business.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Hashable, Sequence

from torch import Tensor, nn

TermsFn = Callable[[Tensor], Tensor]
TrainingFn = Callable[[Tensor, bool], "tuple[Tensor, Tensor]"]


class AdapterError(RuntimeError):
    """An adapter cannot handle a batch, or no adapter fits it; the message says what to implement."""


@dataclass
class BoundLoss:
    """A batch's loss, bound to its targets by the adapter.

    ``terms(x)`` -> per-sample loss terms ``[B, K]`` (the attack objective; must not issue
    collective calls). ``training(x, clean)`` -> ``(trainer's own scalar loss, terms [B, K])``
    from ONE forward pass; ``clean`` is True for the clean input of the step (a trainer
    that already ran that forward, like nnU-Net, reuses its output) and False for the
    noisy one. If omitted, the training loss is ``terms.sum(1).mean()``.
    """

    terms: TermsFn
    training: TrainingFn | None = None
    term_names: Sequence[str] | None = None

    def training_loss(self, x: Tensor, clean: bool = False) -> tuple[Tensor, Tensor]:
        if self.training is not None:
            loss, terms = self.training(x, clean)
        else:
            terms = as_terms(self.terms(x), x.shape[0])
            loss = terms.sum(1).mean()
        return loss, as_terms(terms, x.shape[0])


def as_terms(terms: Any, rows: int | None = None) -> Tensor:
    """``[B]`` or ``[B, K]`` per-sample terms as ``[B, K]``; anything else is refused with
    what a loss must return."""
    if not isinstance(terms, Tensor):
        raise AdapterError(f"the per-sample loss must return a tensor, got {type(terms).__name__}")
    if terms.dim() == 1:
        terms = terms.unsqueeze(1)
    if terms.dim() != 2 or (rows is not None and terms.shape[0] != rows):
        want = "[B] or [B, K]" + (f" with B={rows}" if rows is not None else "")
        raise AdapterError(f"the per-sample loss returned shape {tuple(terms.shape)}, not {want}: it must "
                           f"not reduce over the batch (use reduction='none')")
    return terms


#: torch.nn losses whose per-sample value cannot be negative (their xi must be above 0)
NON_NEGATIVE_LOSSES: tuple[type, ...] = (nn.CrossEntropyLoss, nn.BCELoss, nn.BCEWithLogitsLoss, nn.L1Loss,
                                         nn.MSELoss, nn.SmoothL1Loss, nn.HuberLoss)


class BatchAdapter:
    """How one trainer's batches look (see the module docstring). Subclasses override
    ``inputs``, ``with_inputs`` and ``output_terms`` (or ``bind_loss``), and ``ids`` where
    the batch carries sample ids."""

    #: shown once per run in the host's log (``adapter: <describe()>``)
    name: str = "batch adapter"
    term_names: Sequence[str] = ("loss",)
    #: whether ``term_names`` is the number of terms the loss returns (False: only its first
    #: output says, e.g. a user's loss function that may return ``[B, K]``)
    terms_known: bool = True
    #: the least value each term can take (0 for CE, BCE, L1; None: no bound, e.g. CE - Dice);
    #: an xi below it can never be met, so it is refused
    term_floors: Sequence[float | None] | None = None
    #: the command that computes xi for this trainer (named when xi falls back to the online estimate)
    calibrate_hint: str = "amat calibrate <task>"
    #: (low, high) of the input the attack perturbs (noise is clamped to it), or None
    input_bounds: tuple[float, float] | None = None
    #: whether the trainer's loss on k*B handed rows is a SUM over rows (classic YOLOv5's x batch
    #: size): ``amat run`` then halves the gradient of the outputs, so the step is (L0 + L1) / 2
    sums_over_batch: bool = False
    #: the protocol's column for this trainer (:data:`amat_hooks.protocols.KINDS`)
    protocol_kind: str = "generic"

    def inputs(self, batch: Any) -> Tensor:
        raise NotImplementedError

    def ids(self, batch: Any) -> Sequence[Hashable] | None:
        return None

    def with_inputs(self, batch: Any, x: Tensor) -> Any:
        raise NotImplementedError

    def output_terms(self, batch: Any, output: Any) -> Tensor | None:
        """Per-sample terms ``[B, K]`` of ``output`` for ``batch``'s targets; None where this
        adapter cannot (a host then spends one forward on :meth:`bind_loss` instead)."""
        return None

    def bind_loss(self, batch: Any, model: nn.Module) -> BoundLoss:
        """The attack objective: terms as a function of the input (default: the model's
        output through :meth:`output_terms`, for as many rows as the input has)."""
        def terms(x: Tensor) -> Tensor:
            t = self.output_terms(self.with_inputs(batch, x), model(x))
            if t is None:
                raise AdapterError(f"{type(self).__name__} gives no output_terms; override bind_loss")
            return t

        return BoundLoss(terms=terms, term_names=list(self.term_names))

    def describe(self) -> str:
        """One line for the host's log: which adapter and which loss."""
        return self.name

    def identity(self) -> dict[str, Any]:
        """What an xi file must have been calibrated for (checked against its ``identity``)."""
        return {}

    def state(self) -> dict[str, Any]:
        """Recorded in checkpoints and sidecars (the ``adapter`` entry of the state)."""
        return {"name": self.name, "term_names": list(self.term_names)}

    def configure(self, config: Any) -> None:
        """Take the resolved settings (``AdvConfig``): e.g. ``terms="authors"`` selects the
        authors' acceptance terms where the adapter has them."""

    def check_first_step(self, host: Any) -> None:
        """Called once after the trainer computed its loss on the first batch and before its
        first optimizer step (``amat run``): refine a guess, or raise to refuse the run."""


# -- the generic adapter: (x, y[, ids]) tuples and dicts ------------------------------------------
#: Dict batch keys of the input, the target and the sample ids (first match wins).
X_KEYS = ("x", "input", "inputs", "image", "images")
Y_KEYS = ("y", "target", "targets", "label", "labels")
ID_KEYS = ("ids", "id", "index", "indices", "sample_id")


def find_key(d: dict, keys: Sequence[str]) -> str | None:
    """The first of ``keys`` that ``d`` has, or None."""
    return next((k for k in keys if k in d), None)


def is_tuple_batch(batch: Any) -> bool:
    """``(x, y, ...)``: a tuple/list of at least two items whose first is a tensor."""
    return isinstance(batch, (tuple, list)) and len(batch) >= 2 and isinstance(batch[0], Tensor)


def is_generic_batch(batch: Any) -> bool:
    """An ``(x, y, ...)`` tuple or a dict with an input and a target key."""
    if is_tuple_batch(batch):
        return True
    return (isinstance(batch, dict) and isinstance(batch.get(find_key(batch, X_KEYS) or ""), Tensor)
            and find_key(batch, Y_KEYS) is not None)


def repeat_rows(v: Any, b: int, k: int) -> Any:
    """Every per-sample entry of ``v`` (tensors with b rows, also nested in lists, tuples and
    dicts; lists of b plain values such as ids or names) repeated k times along the batch."""
    if k == 1:
        return v
    if isinstance(v, Tensor):
        return v.repeat(k, *([1] * (v.dim() - 1))) if v.dim() > 0 and v.shape[0] == b else v
    if isinstance(v, dict):
        return type(v)((key, repeat_rows(val, b, k)) for key, val in v.items())
    if isinstance(v, (list, tuple)):
        if len(v) == b and not any(isinstance(e, (Tensor, list, tuple, dict)) for e in v):
            return type(v)(list(v) * k)
        if isinstance(v, tuple) and hasattr(v, "_fields"):
            return type(v)(*(repeat_rows(e, b, k) for e in v))
        return type(v)(repeat_rows(e, b, k) for e in v)
    return v


def stretch(b: int, n: int, what: str = "batch") -> int:
    """How many copies of a ``b``-row batch ``n`` rows are (refused unless a whole number)."""
    k, r = divmod(n, b)
    if r or k < 1:
        raise AdapterError(f"cannot stretch a {what} of {b} rows to {n} rows")
    return k


class TupleAdapter(BatchAdapter):
    """``(x, y)`` / ``(x, y, ids)`` tuples and ``{x|input|image..., y|target|label..., ids|id|index...}``
    dicts, scored by a per-sample loss function ``loss_fn(output, target)`` -> ``[B]`` or ``[B, K]``."""

    name = "generic (x, y[, ids])"
    terms_known = False

    def __init__(self, loss_fn: Callable[[Any, Any], Tensor], term_names: Sequence[str] | None = None) -> None:
        self.loss_fn = loss_fn
        if term_names is not None:
            self.term_names = tuple(term_names)
            self.terms_known = True

    @property
    def term_floors(self) -> Sequence[float | None] | None:  # type: ignore[override]
        """A loss that knows its least values (:func:`per_sample_mean` of a non-negative nn loss) says so."""
        return getattr(self.loss_fn, "term_floors", None)

    def _key(self, batch: dict, keys: Sequence[str], what: str) -> str:
        k = find_key(batch, keys)
        if k is None:
            raise AdapterError(f"dict batch has no {what} key (one of {', '.join(keys)}); keys: "
                               f"{', '.join(map(str, batch))}")
        return k

    def inputs(self, batch: Any) -> Tensor:
        x = batch[0] if is_tuple_batch(batch) else batch[self._key(batch, X_KEYS, "input")] \
            if isinstance(batch, dict) else None
        if not isinstance(x, Tensor):
            raise AdapterError(f"not an (x, y[, ids]) batch: {describe_batch(batch)}")
        if not x.is_floating_point():
            raise AdapterError(f"the input is a {x.dtype} tensor; the attack needs float inputs (convert them "
                               f"in the Dataset, or write an adapter that does, see docs/architecture.md)")
        return x

    def target(self, batch: Any) -> Any:
        return batch[1] if is_tuple_batch(batch) else batch[self._key(batch, Y_KEYS, "target")]

    def ids(self, batch: Any) -> Sequence[Hashable] | None:
        if is_tuple_batch(batch):
            ids = batch[2] if len(batch) >= 3 else None
        else:
            k = find_key(batch, ID_KEYS)
            ids = batch[k] if k is not None else None
        if ids is None or isinstance(ids, (str, bytes)):  # one string is no list of ids: check_ids says so
            return ids
        return ids.tolist() if isinstance(ids, Tensor) else list(ids)

    def with_inputs(self, batch: Any, x: Tensor) -> Any:
        b = self.inputs(batch).shape[0]
        k = stretch(b, x.shape[0])
        others = batch[1:] if is_tuple_batch(batch) else [v for kk, v in batch.items() if kk != find_key(batch, X_KEYS)]
        for v in others:
            if isinstance(v, Tensor) and v.dim() > 0 and v.shape[0] != b:
                raise AdapterError(f"the batch holds a tensor of shape {tuple(v.shape)} next to {b} inputs: the "
                                   f"generic adapter repeats per-sample rows only, so targets of another layout "
                                   f"(e.g. [N, 6] boxes) need an adapter of their own (see docs/architecture.md)")
        if is_tuple_batch(batch):
            rest = [repeat_rows(v, b, k) for v in batch[1:]]
            return type(batch)([x, *rest]) if isinstance(batch, list) else (x, *rest)
        key = find_key(batch, X_KEYS)
        return {kk: (x if kk == key else repeat_rows(v, b, k)) for kk, v in batch.items()}

    def output_terms(self, batch: Any, output: Any) -> Tensor:
        y = self.target(batch)
        if isinstance(y, Tensor) and y.dim() > 0 and isinstance(output, Tensor) and y.shape[0] != output.shape[0]:
            raise AdapterError(f"the target has {y.shape[0]} rows but the output {output.shape[0]}: targets "
                               f"must have one row per sample (write an adapter for this batch layout)")
        return as_terms(self.loss_fn(output, y), output.shape[0] if isinstance(output, Tensor) else None)


def describe_batch(batch: Any) -> str:
    """A batch's structure in a few words (for error messages)."""
    if isinstance(batch, Tensor):
        return f"Tensor{tuple(batch.shape)}"
    if isinstance(batch, dict):
        return "dict with keys " + ", ".join(map(str, list(batch)[:8]))
    if isinstance(batch, (list, tuple)):
        return f"{type(batch).__name__} of {len(batch)}: " + ", ".join(
            (f"{type(b).__name__}{tuple(b.shape)}" if isinstance(b, Tensor) else type(b).__name__) for b in batch[:6])
    return type(batch).__name__


def check_ids(ids: Any, rows: int) -> list[Hashable]:
    """Sample ids as a list of one hashable per row: integers, strings, or tuples of them
    (no None, NaN, float, bool, nested list or 2-D tensor). The message says what to yield."""
    if ids is None:
        raise AdapterError("AMAT needs one sample id per row (margins are kept per sample), but the batch "
                           "carries none; yield (x, y, ids) from the DataLoader (e.g. the dataset index)")
    if isinstance(ids, Tensor):
        if ids.dim() != 1:
            raise AdapterError(f"sample ids must be one per row (a 1-D tensor), got shape {tuple(ids.shape)}")
        if ids.is_floating_point():
            raise AdapterError("sample ids must be integers or strings, got a float tensor; use the dataset "
                               "index (torch.long)")
        ids = ids.tolist()
    if isinstance(ids, (str, bytes)) or not isinstance(ids, Sequence):
        raise AdapterError(f"sample ids must be a list with one id per row, got {type(ids).__name__}")
    out = [_plain_id(i) for i in ids]
    if len(out) != rows:
        raise AdapterError(f"got {len(out)} sample ids for a batch of {rows} rows; give one id per row")
    return out


def _plain_id(i: Any) -> Hashable:
    if hasattr(i, "item") and getattr(i, "ndim", 1) == 0:  # numpy / 0-d tensor scalars
        i = i.item()
    if isinstance(i, bool) or i is None or isinstance(i, float):
        what = "None" if i is None else f"{i!r} ({type(i).__name__})"
        raise AdapterError(f"sample id {what} cannot identify a sample; use integers (the dataset index) "
                           f"or strings (file names)")
    if isinstance(i, (int, str)):
        return i
    if isinstance(i, (tuple, list)) and all(isinstance(v, (int, str)) and not isinstance(v, bool) for v in i):
        return tuple(i)
    raise AdapterError(f"sample id {i!r} ({type(i).__name__}) is not an integer, a string or a tuple of them")


__all__ = ["AdapterError", "BatchAdapter", "BoundLoss", "TupleAdapter", "as_terms", "check_ids",
           "describe_batch", "find_key", "is_generic_batch", "is_tuple_batch", "repeat_rows", "stretch"]
