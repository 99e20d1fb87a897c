"""Per-sample margins E(i) of Algorithm 1, keyed by any hashable sample id."""
from __future__ import annotations

import hashlib
import json
import math
from typing import Any, Hashable, Mapping, Sequence

import torch
from torch import Tensor

STATE_VERSION = 1


class MarginMismatchError(ValueError):
    """A saved margin table does not belong to this run (other init/step/dataset)."""


#: How a failed visit refines E: ``half`` (Algorithm 1 line 12: ``(||noise|| + E) / 2``),
#: ``floor`` (the same, at least Delta: the authors' YOLO code), ``none`` (kept: their landmark code).
REFINES = ("half", "floor", "none")
#: When margins change: every ``visit`` (Algorithm 1, per mini-batch) or once per ``epoch``
#: (the authors' code: +Delta if any visit of the epoch passed, else the epoch's refine).
UPDATES = ("visit", "epoch")


class MarginStore:
    """The table E of Algorithm 1: one margin per training sample.

    Unknown ids start at ``init`` (the paper: E(i) = Delta), or at their ``initial`` margin
    (``--adv-margin-init``: the radius the clean model measured, floored at ``init``). ``update`` applies line 10
    (accepted: ``E += delta``, capped by ``max_margin``) or line 12 (refine, :data:`REFINES`).
    With ``update="epoch"`` the visits are kept and applied by :meth:`end_epoch`: a sample
    grows by Delta once if any visit passed, else takes the epoch's refine (the pairwise
    average in visit order, seeded with its margin). Under ``torch.distributed`` each rank
    updates its own samples; :meth:`sync` replays every rank's visits in rank order so all
    ranks hold the same table.
    """

    def __init__(self, init: float, delta: float, max_margin: float | None = None,
                 dataset_id: str | None = None, refine: str = "half", update: str = "visit",
                 initial: Mapping[Hashable, float] | None = None, initial_digest: str | None = None) -> None:
        if refine not in REFINES or update not in UPDATES:
            raise ValueError(f"refine must be one of {REFINES} and update one of {UPDATES}, got {refine!r}, {update!r}")
        self.refine, self.update_mode = refine, update
        if not (isinstance(init, (int, float)) and math.isfinite(init) and init >= 0):
            raise ValueError(f"MarginStore init must be a finite number >= 0, got {init!r}")
        if not (isinstance(delta, (int, float)) and math.isfinite(delta) and delta > 0):
            raise ValueError(f"MarginStore delta (the expansion step) must be > 0, got {delta!r}; "
                             f"pass a positive expansion step such as 0.5")
        if max_margin is not None and not max_margin >= init:
            raise ValueError(f"max_margin ({max_margin}) must be >= init ({init}) or None")
        self.init = float(init)
        self.delta = float(delta)
        self.max_margin = None if max_margin is None else float(max_margin)
        self.dataset_id = dataset_id
        # per-sample starting margins (``--adv-margin-init``: the clean model's radius), floored at
        # ``init`` and capped at ``max_margin``; ids not in it start at ``init``
        self.initial = {} if initial is None else {i: self._floored(float(v)) for i, v in initial.items()}
        self.initial_digest = initial_digest if initial else None
        self._index: dict[Hashable, int] = {}
        self._ids: list[Hashable] = []
        self._values = torch.empty(0, dtype=torch.float64)
        self._updates = 0
        self._pending: list[tuple[Hashable, bool, float]] = []
        self._base: dict[Hashable, float | None] = {}

    def _floored(self, v: float) -> float:
        v = max(v, self.init)
        return v if self.max_margin is None else min(v, self.max_margin)

    def start(self, sample_id: Hashable) -> float:
        """The margin a sample starts with: its initial margin, else ``init``."""
        return self.initial.get(sample_id, self.init)

    def check_initial(self, ids: Sequence[Hashable]) -> None:
        """Every trained sample must have an initial margin: ids of another split or keying
        would silently start at Delta."""
        for i in ids:
            if i not in self.initial:
                example = next(iter(self.initial))
                raise MarginMismatchError(
                    f"sample id {i!r} has no initial margin in the --adv-margin-init file ({len(self.initial)} ids, "
                    f"e.g. {example!r}); write the file with `amat calibrate <task> --margins-out FILE` on this "
                    f"run's training split, or leave --adv-margin-init out")

    # -- table access -------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, sample_id: Hashable) -> bool:
        return sample_id in self._index

    def _rows(self, ids: Sequence[Hashable], create: bool) -> list[int]:
        rows = []
        new: list[float] = []
        for i in ids:
            r = self._index.get(i)
            if r is None:
                if not create:
                    rows.append(-1)
                    continue
                r = len(self._ids)
                self._index[i] = r
                self._ids.append(i)
                new.append(self.start(i))
            rows.append(r)
        if new:
            self._values = torch.cat([self._values, torch.tensor(new, dtype=torch.float64)])
        return rows

    def get(self, ids: Sequence[Hashable], device: torch.device | str | None = None) -> Tensor:
        """Margins for a batch, float32 ``[B]``; unknown ids read as their start (not stored)."""
        _check_ids(ids)
        if self.initial:
            self.check_initial(ids)
        rows = self._rows(ids, create=False)
        idx = torch.tensor(rows, dtype=torch.long)
        out = torch.tensor([self.start(i) for i in ids], dtype=torch.float64)
        known = idx >= 0
        out[known] = self._values[idx[known]]
        return out.to(dtype=torch.float32, device=device)

    def update(self, ids: Sequence[Hashable], accepted: Tensor | Sequence[bool],
               noise_norm: Tensor | Sequence[float]) -> None:
        """Algorithm 1 lines 9-12 for a batch; duplicate ids are applied in order."""
        _check_ids(ids)
        acc = torch.as_tensor(accepted, dtype=torch.bool).detach().cpu().reshape(-1)
        nn_ = torch.as_tensor(noise_norm, dtype=torch.float64).detach().cpu().reshape(-1)
        if not (len(ids) == acc.numel() == nn_.numel()):
            raise ValueError(f"update needs one accepted flag and one noise norm per id: got "
                             f"{len(ids)} ids, {acc.numel()} flags, {nn_.numel()} norms")
        if len(ids) == 0:
            return
        if not torch.isfinite(nn_).all():
            raise ValueError("noise_norm has NaN/inf entries; drop those samples before update")
        if self.update_mode == "epoch":  # applied by end_epoch
            self._rows(ids, create=True)
            self._pending.extend(zip(ids, acc.tolist(), nn_.tolist()))
            self._updates += len(ids)
            return
        for i in ids:
            if i not in self._base:
                r = self._index.get(i)
                self._base[i] = None if r is None else float(self._values[r])
        rows = self._rows(ids, create=True)
        self._pending.extend(zip(ids, acc.tolist(), nn_.tolist()))
        if len(set(rows)) == len(rows):
            idx = torch.tensor(rows, dtype=torch.long)
            self._values[idx] = self._rule(self._values[idx], acc, nn_)
        else:  # duplicates: sequential, in order
            for r, a, n in zip(rows, acc.tolist(), nn_.tolist()):
                self._values[r] = self._rule(self._values[r:r + 1], torch.tensor([a]),
                                             torch.tensor([n], dtype=torch.float64))[0]
        self._updates += len(rows)

    def _grown(self, e: Tensor) -> Tensor:
        return e + self.delta if self.max_margin is None else (e + self.delta).clamp(max=self.max_margin)

    def _refined(self, e: Tensor, noise_norm: Tensor) -> Tensor:
        if self.refine == "none":
            return e
        r = (noise_norm + e) / 2
        return r.clamp(min=self.delta) if self.refine == "floor" else r

    def _rule(self, e: Tensor, accepted: Tensor, noise_norm: Tensor) -> Tensor:
        return torch.where(accepted, self._grown(e), self._refined(e, noise_norm))

    def end_epoch(self) -> int:
        """``update="epoch"``: apply the epoch's visits (after :meth:`sync`); returns the samples
        changed. Per sample: ``E + Delta`` if any visit passed, else the visits' refine applied
        in order to a copy of E (the authors' ``E_new = (E_new + ||noise||) / 2``)."""
        if self.update_mode != "epoch" or not self._pending:
            self._pending.clear()
            return 0
        passed: dict[Hashable, bool] = {}
        refined: dict[Hashable, Tensor] = {}
        for i, a, n in self._pending:
            e = refined.get(i, self._values[self._index[i]:self._index[i] + 1])
            refined[i] = self._refined(e, torch.tensor([n], dtype=torch.float64))
            passed[i] = passed.get(i, False) or bool(a)
        for i, ok in passed.items():
            r = self._index[i]
            self._values[r] = self._grown(self._values[r:r + 1])[0] if ok else refined[i][0]
        self._pending.clear()
        return len(passed)

    # -- distributed ----------------------------------------------------------------------
    def sync(self, group: Any = None) -> None:
        """Merge all ranks' updates since the last sync (no-op without torch.distributed).

        Every rank rolls its own updates back, then replays the gathered update logs of
        ranks 0..N-1 in order, so all ranks end with the same table (``update="epoch"``: the
        gathered visits wait for :meth:`end_epoch`). Call it at the same points on every rank
        (it is a collective).
        """
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(group) == 1:
            if self.update_mode == "visit":
                self._pending.clear()
            self._base.clear()
            return
        logs: list[Any] = [None] * dist.get_world_size(group)
        dist.all_gather_object(logs, self._pending, group=group)
        if self.update_mode == "epoch":
            self._pending = [v for log in logs for v in log]
            for i, _, _ in self._pending:
                self._rows([i], create=True)
            return
        for i, value in self._base.items():  # roll back own updates
            r = self._index[i]
            self._values[r] = self.start(i) if value is None else value
        self._pending = []
        self._base = {}
        for log in logs:
            for i, a, n in log:
                rows = self._rows([i], create=True)
                self._values[rows[0]] = self._rule(self._values[rows[0]:rows[0] + 1], torch.tensor([a]),
                                                   torch.tensor([n], dtype=torch.float64))[0]
        self._pending.clear()
        self._base.clear()

    # -- persistence ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Plain Python containers (pickle- and, for str ids, JSON-friendly)."""
        return {
            "version": STATE_VERSION,
            "init": self.init,
            "delta": self.delta,
            "max_margin": self.max_margin,
            "dataset_id": self.dataset_id,
            "ids": list(self._ids),
            "values": self._values.tolist(),
            "updates": self._updates,
            "refine": self.refine,
            "update": self.update_mode,
            "initial": None if not self.initial else {"digest": self.initial_digest, "n": len(self.initial)},
            "pending": [[list(i) if isinstance(i, tuple) else i, a, n] for i, a, n in self._pending]
            if self.update_mode == "epoch" else [],
        }

    def load_state_dict(self, state: dict[str, Any], force: bool = False) -> None:
        """Restore a table exactly. A table made with another init/step/dataset is refused
        unless ``force=True`` (its margins would mean something else)."""
        if not isinstance(state, dict):
            raise MarginMismatchError(f"not a MarginStore state: a {type(state).__name__}")
        for key in ("init", "delta", "ids", "values"):
            if key not in state:
                raise MarginMismatchError(f"not a MarginStore state: key {key!r} missing")
        problems = []
        same_as_delta = (abs(float(state["init"]) - float(state["delta"])) < 1e-12
                         and abs(self.init - self.delta) < 1e-12)  # AMAT: E starts at Delta, say it once
        if abs(float(state["init"]) - self.init) > 1e-12 and not same_as_delta:
            problems.append(f"init {state['init']} != {self.init}")
        if abs(float(state["delta"]) - self.delta) > 1e-12:
            problems.append(f"step {state['delta']:g} != {self.delta:g}")
        for key, mine in (("refine", self.refine), ("update", self.update_mode)):
            if state.get(key, mine) != mine:
                problems.append(f"{key} {state[key]} != {mine} (--adv-{key})")
        mine_init = self.initial_digest if self.initial else None
        theirs = (state.get("initial") or {}).get("digest")
        if theirs != mine_init:
            problems.append(f"initial margins {theirs or 'Delta'} != {mine_init or 'Delta'} (--adv-margin-init)")
        if (self.dataset_id is not None and state.get("dataset_id") is not None
                and state["dataset_id"] != self.dataset_id):
            problems.append(f"dataset {state['dataset_id']!r} != {self.dataset_id!r}")
        if problems and not force:
            raise MarginMismatchError(
                "the saved margin table was made for another run (" + "; ".join(problems)
                + "). Start a fresh run, resume with the matching step size (--adv-step) and dataset, "
                "or continue anyway with --adv-force-resume")
        ids = [tuple(i) if isinstance(i, list) else i for i in state["ids"]]
        if len(ids) != len(state["values"]):
            raise MarginMismatchError("corrupt margin table: ids and values differ in length")
        values = torch.as_tensor(state["values"], dtype=torch.float64)
        if values.numel() and not (torch.isfinite(values).all() and (values >= 0).all()):
            bad = int((~torch.isfinite(values) | (values < 0)).sum())
            raise MarginMismatchError(f"corrupt margin table: {bad} margin(s) are NaN, inf or negative; resume "
                                      f"from an earlier state or start a fresh run")
        self._ids = ids
        self._index = {i: r for r, i in enumerate(ids)}
        self._values = torch.tensor(state["values"], dtype=torch.float64)
        self._updates = int(state.get("updates", 0))
        self._pending = [(tuple(i) if isinstance(i, list) else i, bool(a), float(n))
                         for i, a, n in (state.get("pending") or [])] if self.update_mode == "epoch" else []
        self._base.clear()

    # -- reporting ------------------------------------------------------------------------
    def values(self) -> Tensor:
        return self._values.clone()

    def ids(self) -> list[Hashable]:
        return list(self._ids)

    def summary(self) -> dict[str, float]:
        """count/mean/std/min/max/q10/q50/q90 of the stored margins (for logs and plots)."""
        v = self._values
        if v.numel() == 0:
            return {"count": 0, "updates": self._updates, "mean": self.init, "std": 0.0,
                    "min": self.init, "max": self.init, "q10": self.init, "q50": self.init,
                    "q90": self.init}
        q = torch.quantile(v, torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64))
        return {"count": int(v.numel()), "updates": self._updates, "mean": float(v.mean()),
                "std": float(v.std(unbiased=False)), "min": float(v.min()), "max": float(v.max()),
                "q10": float(q[0]), "q50": float(q[1]), "q90": float(q[2])}

    def digest(self) -> str:
        """First 16 hex digits of the SHA-256 of the table (ids and the exact bits of its float64
        values): two tables with the same digest are the same table bit for bit. Logged on resume."""
        ids = [list(i) if isinstance(i, tuple) else i for i in self._ids]
        payload = json.dumps([ids, [float(v).hex() for v in self._values.tolist()]], separators=(",", ":"))
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]

    def format_summary(self) -> str:
        s = self.summary()
        return (f"margins n={s['count']} mean={s['mean']:.4g} min={s['min']:.4g} "
                f"q50={s['q50']:.4g} max={s['max']:.4g}")


def _check_ids(ids: Sequence[Hashable]) -> None:
    if ids is None:
        raise ValueError("sample ids are missing: AMAT needs one id per sample in the batch "
                         "(e.g. file names or dataset indices); let the adapter return them")
    for i in ids:
        if isinstance(i, Tensor):
            raise TypeError("sample ids must be hashable Python values (int/str/tuple), not tensors; "
                            "convert with .tolist()")
