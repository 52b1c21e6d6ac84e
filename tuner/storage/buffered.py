"""An Optuna storage that writes each running trial in a few transactions instead of dozens.

Plain ``RDBStorage`` commits every ``suggest_*``, every ``report`` and every user attribute in
its own transaction (~16-19 per trial in the reference measurements, ~50 for a 40-epoch trial
here). :class:`BufferedStorage` keeps the trials *this process runs* in memory and writes them in
three transactions: the trial row (``ask``), its parameters plus a first heartbeat (:meth:`flush`,
right after sampling, so a retry of a crashed trial has its parameters), and everything else
together with the final state (``tell``), atomically. Long trials are flushed periodically so
dashboards see their learning curves. Reads of other trials go through ``_CachedStorage``
(finished trials are cached) and are refreshed at most every ``refresh_interval`` seconds unless
this process finished a trial since.

Durability matches ``_CachedStorage``'s contract: a trial's state is written together with (or
after) everything reported before it. Relies on ``RDBStorage`` internals of Optuna 5.0.x (the
``_without_commit`` helpers and ``models``); ``tests/test_storage.py`` pins them.
"""

from __future__ import annotations

import copy
import json
import threading
import time
import uuid
from collections.abc import Container, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import optuna
import sqlalchemy
from optuna import distributions
from optuna.storages import RDBStorage
from optuna.storages._cached_storage import _CachedStorage
from optuna.storages._rdb import models
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.dialects import postgresql as postgresql_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect


@dataclass
class _Pending:
    params: dict[str, tuple[float, distributions.BaseDistribution]] = field(default_factory=dict)
    intermediate: dict[int, float] = field(default_factory=dict)
    user_attrs: dict[str, Any] = field(default_factory=dict)
    system_attrs: dict[str, Any] = field(default_factory=dict)
    heartbeat: bool = True

    def empty(self) -> bool:
        return not (self.params or self.intermediate or self.user_attrs or self.system_attrs
                    or self.heartbeat)


CLAIM_KEY = "tuner.claim"


@dataclass
class _Owned:
    frozen: FrozenTrial
    pending: _Pending = field(default_factory=_Pending)
    last_flush: float = field(default_factory=time.monotonic)
    # this process's claim on the trial, stored with it (system attribute ``tuner.claim``):
    # every write checks that no other process has claimed the trial since
    token: str = field(default_factory=lambda: uuid.uuid4().hex)


class BufferedStorage(_CachedStorage):
    """``_CachedStorage`` over ``RDBStorage`` that buffers writes to the trials it runs."""

    def __init__(self, backend: RDBStorage, *, refresh_interval: float = 1.0) -> None:
        super().__init__(backend)
        self.backend = backend
        self.refresh_interval = refresh_interval
        self._owned: dict[int, _Owned] = {}
        # claims of WAITING trials whose outcome we may not know: the claim's commit, or the
        # read after it, failed (a dropped connection); {trial_id: claim token}
        self._unsettled: dict[int, str] = {}
        self._last_refresh: dict[int, float] = {}
        self._lost: set[int] = set()  # found finished by another process; see flush_older_than
        # sorted trial lists of finished states, valid until the cache changes
        self._listings: dict[tuple[int, frozenset], list[FrozenTrial]] = {}
        self._owned_lock = threading.RLock()

    def __getstate__(self) -> dict[Any, Any]:
        state = super().__getstate__()
        del state["_owned_lock"]
        return state

    def __setstate__(self, state: dict[Any, Any]) -> None:
        super().__setstate__(state)
        self._owned_lock = threading.RLock()

    # --- study identity ------------------------------------------------------------------

    def get_study_id_from_name(self, study_name: str) -> int:
        # SQLite reuses the id of a deleted study: if another process deleted a study and created
        # this one, our cache for the id belongs to the old study; forget it.
        study_id = self._backend.get_study_id_from_name(study_name)
        with self._lock:
            info = self._studies.get(study_id)
            if info is not None and info.name is None:
                info.name = study_name
            elif info is not None and info.name != study_name:
                for number in list(info.trials):
                    trial_id = self._study_id_and_number_to_trial_id.pop((study_id, number), None)
                    self._trial_id_to_study_id_and_number.pop(trial_id, None)
                del self._studies[study_id]
                self._last_refresh.pop(study_id, None)
                self._listings.clear()
        return study_id

    def get_best_trial(self, study_id: int) -> FrozenTrial:
        """The best COMPLETE trial; among trials with the same value, the earliest (lowest
        number). Optuna's query returns any of them, and PostgreSQL a different one from call
        to call: ``tuner ls``, ``show``, ``best`` and the views must name the same trial."""
        best = super().get_best_trial(study_id)
        with self.backend.engine.connect() as conn:
            earliest = earliest_with_value(conn, study_id, best.value)
        if earliest is None or earliest[1] == best.number:
            return best
        return self.get_trial(earliest[0])

    # --- which trials are ours ----------------------------------------------------------

    def owned_trial_ids(self) -> list[int]:
        with self._owned_lock:
            return list(self._owned)

    def _pop(self, trial_id: int) -> bool:
        """Claim a WAITING trial: RUNNING, a fresh start time, our claim token and a first
        heartbeat, in one transaction (``False`` if another process claimed it first). The
        heartbeat matters: a trial put back in the queue keeps its old heartbeat row, and until
        the first flush another runner would see that as a stale heartbeat and fail it."""
        trials = models.TrialModel.__table__
        token = uuid.uuid4().hex
        with self._owned_lock:
            self._unsettled[trial_id] = token
        with self._backend.engine.begin() as conn:
            claimed = conn.execute(trials.update().where(
                trials.c.trial_id == trial_id, trials.c.state == TrialState.WAITING).values(
                state=TrialState.RUNNING, datetime_start=utcnow())).rowcount == 1
            if not claimed:
                self._settled(trial_id)  # nothing of ours was written
                state = trial_state(conn.execute(sqlalchemy.select(trials.c.state).where(
                    trials.c.trial_id == trial_id)).scalar())
                if state is None:
                    raise KeyError(models.NOT_FOUND_MSG)
                if state.is_finished():
                    raise optuna.exceptions.UpdateFinishedTrialError(
                        f"trial {trial_id} is already finished")
                return False
            upsert(conn, models.TrialSystemAttributeModel, ("trial_id", "key"), [
                {"trial_id": trial_id, "key": CLAIM_KEY, "value_json": json.dumps(token)}])
            _beat(conn, trial_id)
        frozen = self._backend.get_trial(trial_id)
        with self._owned_lock:
            self._owned[trial_id] = _Owned(frozen=frozen, token=token)
            self._unsettled.pop(trial_id, None)
        return True

    def _settled(self, trial_id: int) -> None:
        with self._owned_lock:
            self._unsettled.pop(trial_id, None)

    def put_back_unsettled_claims(self) -> list[int]:
        """Put back in the queue (WAITING) every trial whose claim may have committed without
        this process learning it (the commit's answer or the read after it was lost): RUNNING
        under our claim token, yet owned by nobody. Without this it stayed RUNNING until a
        stale-heartbeat sweep failed it (SQLite runners don't sweep: the run waited for it for
        ever). Safe to repeat: only a trial still RUNNING under our token changes. Returns the
        trials put back."""
        trials = models.TrialModel.__table__
        claims = models.TrialSystemAttributeModel.__table__
        with self._owned_lock:
            unsettled = dict(self._unsettled)
        put_back = []
        for trial_id, token in unsettled.items():
            ours = sqlalchemy.exists().where(claims.c.trial_id == trial_id,
                                             claims.c.key == CLAIM_KEY,
                                             claims.c.value_json == json.dumps(token))
            with self._backend.engine.begin() as conn:
                if conn.execute(trials.update().where(
                        trials.c.trial_id == trial_id, trials.c.state == TrialState.RUNNING, ours)
                        .values(state=TrialState.WAITING, datetime_start=None)).rowcount:
                    put_back.append(trial_id)
            self._settled(trial_id)
        return put_back

    def release(self, trial_id: int) -> None:
        """Forget a trial without writing (after another process finished it)."""
        with self._owned_lock:
            self._owned.pop(trial_id, None)

    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        trial_id = super().create_new_trial(study_id, template_trial)
        if template_trial is None:  # a RUNNING trial this process is about to run
            with self._lock:
                number = self._trial_id_to_study_id_and_number[trial_id][1]
                frozen = copy.deepcopy(self._studies[study_id].trials[number])
            owned = _Owned(frozen=frozen)
            frozen.system_attrs[CLAIM_KEY] = owned.token
            with self._owned_lock:
                self._owned[trial_id] = owned
        return trial_id

    # --- buffered writes -----------------------------------------------------------------

    def set_trial_param(self, trial_id: int, param_name: str, param_value_internal: float,
                        distribution: distributions.BaseDistribution) -> None:
        owned = self._owned.get(trial_id)
        if owned is None:
            return super().set_trial_param(trial_id, param_name, param_value_internal, distribution)
        study_id = self._trial_id_to_study_id_and_number[trial_id][0]
        cached = self._studies[study_id].param_distribution.get(param_name)
        if cached is not None:
            distributions.check_distribution_compatibility(cached, distribution)
        with self._owned_lock:
            owned.pending.params[param_name] = (param_value_internal, distribution)
            owned.frozen.params[param_name] = distribution.to_external_repr(param_value_internal)
            owned.frozen.distributions[param_name] = distribution

    def set_trial_intermediate_value(self, trial_id: int, step: int, intermediate_value: float) -> None:
        owned = self._owned.get(trial_id)
        if owned is None:
            return super().set_trial_intermediate_value(trial_id, step, intermediate_value)
        with self._owned_lock:
            owned.pending.intermediate[step] = intermediate_value
            owned.frozen.intermediate_values[step] = intermediate_value

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        if not self._buffer_attr(trial_id, "user_attrs", key, value):
            super().set_trial_user_attr(trial_id, key, value)

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        if not self._buffer_attr(trial_id, "system_attrs", key, value):
            super().set_trial_system_attr(trial_id, key, value)

    def _buffer_attr(self, trial_id: int, kind: str, key: str, value: Any) -> bool:
        """Buffer attribute ``key`` (``kind``: ``user_attrs`` or ``system_attrs``) of a trial
        this process runs; ``False`` when it is not ours (the caller writes it through)."""
        owned = self._owned.get(trial_id)
        if owned is None:
            return False
        with self._owned_lock:
            getattr(owned.pending, kind)[key] = value
            getattr(owned.frozen, kind)[key] = value
        return True

    def set_trial_state_values(self, trial_id: int, state: TrialState,
                               values: Sequence[float] | None = None) -> bool:
        owned = self._owned.get(trial_id)
        if state == TrialState.RUNNING:  # popping a WAITING trial: it becomes ours
            return self._pop(trial_id)
        if owned is None:
            return super().set_trial_state_values(trial_id, state, values)
        self._write(trial_id, owned, state=state, values=values)
        with self._owned_lock:
            self._owned.pop(trial_id, None)
        study_id, number = self._trial_id_to_study_id_and_number[trial_id]
        if state.is_finished():
            # What we just wrote is what the database holds: cache it, no need to read it back.
            finished = copy.deepcopy(owned.frozen)
            finished.state = state
            finished.values = None if values is None else [float(v) for v in values]
            finished.datetime_complete = datetime.now()
            with self._lock:
                self._studies[study_id].trials[number] = finished
                self._listings.clear()
        else:
            self._last_refresh.pop(study_id, None)
        return True

    def flush(self, trial_id: int) -> None:
        """Write a running trial's buffered data now, in one transaction."""
        owned = self._owned.get(trial_id)
        if owned is not None and not owned.pending.empty():
            self._write(trial_id, owned)

    def flush_older_than(self, seconds: float) -> list[int]:
        """Flush every owned trial not written for ``seconds`` (live learning curves). Returns
        the trials another process finished meanwhile (e.g. failed as stale while this one was
        cut off from the database); they are no longer ours. Those found by a call that then
        failed (a dropped connection) are returned by the next call."""
        now = time.monotonic()
        for trial_id in self.owned_trial_ids():
            owned = self._owned.get(trial_id)
            if owned is not None and now - owned.last_flush >= seconds:
                try:
                    self.flush(trial_id)
                except optuna.exceptions.UpdateFinishedTrialError:
                    self.release(trial_id)
                    self._lost.add(trial_id)
        lost, self._lost = sorted(self._lost), set()
        return lost

    def _write(self, trial_id: int, owned: _Owned, *, state: TrialState | None = None,
               values: Sequence[float] | None = None) -> None:
        """Write ``owned``'s pending data (and ``state``/``values``) in one transaction of a few
        multi-row upserts, if the trial is still RUNNING and still ours: another process may
        have failed it as stale, or claimed it after we put it back in the queue
        (``UpdateFinishedTrialError`` then, and nothing is written). Idempotent: a retry after
        an ambiguous commit finds its own earlier write (the state and our claim token) and
        succeeds without writing again."""
        with self._owned_lock:
            pending = owned.pending
            owned.pending = _Pending(heartbeat=False)
        study_id = self._trial_id_to_study_id_and_number[trial_id][0]
        trials = models.TrialModel.__table__
        claims = models.TrialSystemAttributeModel.__table__
        mine = json.dumps(owned.token)
        try:
            with self._backend.engine.begin() as conn:
                # First a write that locks the row (and takes SQLite's write lock at once):
                # still RUNNING, and nobody else's claim on it.
                foreign = sqlalchemy.exists().where(
                    claims.c.trial_id == trial_id, claims.c.key == CLAIM_KEY,
                    claims.c.value_json != mine)
                guard = conn.execute(trials.update().where(
                    trials.c.trial_id == trial_id, trials.c.state == TrialState.RUNNING, ~foreign)
                    .values(state=trials.c.state))
                # the claim records the state we end it in: a retry knows its own write
                final = owned.token if state is None else f"{owned.token}:{state.name}"
                if guard.rowcount != 1:
                    if state is not None and _written_before(conn, trial_id, json.dumps(final)):
                        pending = _Pending(heartbeat=False)  # our earlier attempt committed
                        raise _AlreadyWritten
                    raise optuna.exceptions.UpdateFinishedTrialError(
                        f"trial {owned.frozen.number} is no longer RUNNING in the database, or "
                        "another process has claimed it")
                pending.system_attrs[CLAIM_KEY] = final
                owned.frozen.system_attrs[CLAIM_KEY] = final
                self._check_distributions(conn, study_id, pending)
                upsert(conn, models.TrialParamModel, ("trial_id", "param_name"), [
                    {"trial_id": trial_id, "param_name": name, "param_value": value,
                     "distribution_json": distributions.distribution_to_json(dist)}
                    for name, (value, dist) in pending.params.items()])
                rows = []
                for step, value in pending.intermediate.items():
                    stored, kind = models.TrialIntermediateValueModel.intermediate_value_to_stored_repr(value)
                    rows.append({"trial_id": trial_id, "step": step, "intermediate_value": stored,
                                 "intermediate_value_type": kind})
                upsert(conn, models.TrialIntermediateValueModel, ("trial_id", "step"), rows)
                for model, attrs in ((models.TrialUserAttributeModel, pending.user_attrs),
                                     (models.TrialSystemAttributeModel, pending.system_attrs)):
                    upsert(conn, model, ("trial_id", "key"), [
                        {"trial_id": trial_id, "key": key, "value_json": json.dumps(value)}
                        for key, value in attrs.items()])
                if pending.heartbeat and state is None:
                    _beat(conn, trial_id)
                if values is not None:
                    rows = []
                    for objective, value in enumerate(values):
                        stored, kind = models.TrialValueModel.value_to_stored_repr(value)
                        rows.append({"trial_id": trial_id, "objective": objective, "value": stored,
                                     "value_type": kind})
                    upsert(conn, models.TrialValueModel, ("trial_id", "objective"), rows)
                if state is not None:  # (the row is locked by the guard above)
                    update: dict[str, Any] = {"state": state}
                    if state.is_finished():
                        update["datetime_complete"] = utcnow()
                    conn.execute(trials.update().where(trials.c.trial_id == trial_id).values(**update))
        except _AlreadyWritten:
            pass
        except BaseException:
            with self._owned_lock:  # keep the data for the next attempt
                owned.pending = _merge(pending, owned.pending)
            raise
        for name, (_, dist) in pending.params.items():
            self._studies[study_id].param_distribution.setdefault(name, dist)
        owned.last_flush = time.monotonic()

    def _check_distributions(self, conn: sqlalchemy.Connection, study_id: int,
                             pending: _Pending) -> None:
        """A parameter name keeps one distribution kind per study (as ``RDBStorage`` checks)."""
        cache = self._studies[study_id].param_distribution
        unknown = [name for name in pending.params if name not in cache]
        if unknown:
            params, trials = models.TrialParamModel.__table__, models.TrialModel.__table__
            rows = conn.execute(
                sqlalchemy.select(params.c.param_name, sqlalchemy.func.min(params.c.distribution_json))
                .join(trials, trials.c.trial_id == params.c.trial_id)
                .where(trials.c.study_id == study_id, params.c.param_name.in_(unknown))
                .group_by(params.c.param_name)).all()
            for name, text in rows:
                cache.setdefault(name, distributions.json_to_distribution(text))
        for name, (_, dist) in pending.params.items():
            if name in cache:
                distributions.check_distribution_compatibility(cache[name], dist)

    # --- reads -------------------------------------------------------------------------

    def get_trial(self, trial_id: int) -> FrozenTrial:
        owned = self._owned.get(trial_id)
        if owned is not None:
            with self._owned_lock:
                return copy.deepcopy(owned.frozen)
        return super().get_trial(trial_id)

    def get_all_trials(self, study_id: int, deepcopy: bool = True,
                       states: Container[TrialState] | None = None) -> list[FrozenTrial]:
        now = time.monotonic()
        if now - self._last_refresh.get(study_id, -1e9) >= self.refresh_interval:
            self._read_trials_from_remote_storage(study_id)
            self._last_refresh[study_id] = now
        key = None
        if states is not None and not {TrialState.RUNNING, TrialState.WAITING} & set(states):
            key = (study_id, frozenset(states))  # finished states only: ours cannot be in it
            with self._lock:
                listed = self._listings.get(key)
            if listed is not None:
                return copy.deepcopy(listed) if deepcopy else list(listed)
        with self._lock:
            trials = dict(self._studies[study_id].trials)
        with self._owned_lock:
            for owned in self._owned.values():
                trial = owned.frozen
                if self._trial_id_to_study_id_and_number.get(trial._trial_id, (None,))[0] == study_id:
                    trials[trial.number] = trial
        selected = [t for _, t in sorted(trials.items()) if states is None or t.state in states]
        if key is not None:
            with self._lock:
                self._listings[key] = selected
        return copy.deepcopy(selected) if deepcopy else list(selected)

    def _add_trials_to_cache(self, study_id: int, trials: list[FrozenTrial]) -> None:
        super()._add_trials_to_cache(study_id, trials)  # (called with self._lock held)
        self._listings.clear()

    def _read_trials_from_remote_storage(self, study_id: int) -> None:
        """Bring the cache up to date, loading in full only the trials that need it.

        ``_CachedStorage`` re-loads every trial above the last finished one it *read*, and the
        trials this process finished are cached without a read-back, so it would load them all
        again (with their learning curves), under the cache lock, once per refresh. Here one
        light query lists the ids and states above that mark; only trials that are new,
        changed, or still running in another process are loaded; our own running trials are
        known locally and never re-read."""
        with self._lock:
            study = self._studies.get(study_id)
        if study is None:  # first read of this study: everything (nothing of it is ours yet)
            super()._read_trials_from_remote_storage(study_id)
            return
        with self._lock:
            with self._owned_lock:
                owned = set(self._owned)
            listed = self._list_states(study_id, study.last_finished_trial_id)
            need = {trial_id for trial_id in study.unfinished_trial_ids if trial_id not in owned}
            for trial_id, state in listed:
                if trial_id not in owned and not (state.is_finished() and self._cached_finished(trial_id)):
                    need.add(trial_id)
            loaded: dict[int, FrozenTrial] = {}
            if need:
                above = max(need | {trial_id for trial_id, _ in listed})
                loaded = {t._trial_id: t for t in self._backend._get_trials(
                    study_id, states=None, included_trial_ids=need, trial_id_greater_than=above)}
                self._add_trials_to_cache(study_id, list(loaded.values()))
            for trial in loaded.values():
                if trial.state.is_finished():
                    study.unfinished_trial_ids.discard(trial._trial_id)
                else:
                    study.unfinished_trial_ids.add(trial._trial_id)
            # the mark moves up to the last trial of an unbroken run of finished ones
            for trial_id, state in listed:
                current = loaded[trial_id].state if trial_id in loaded else state
                if trial_id in owned or not current.is_finished():
                    break
                study.last_finished_trial_id = max(study.last_finished_trial_id, trial_id)

    def _list_states(self, study_id: int, above: int) -> list[tuple[int, TrialState]]:
        """``(trial_id, state)`` of the study's trials with ids above ``above``, in id order;
        ``KeyError`` if the study does not exist (as ``_CachedStorage`` raises)."""
        studies, trials = models.StudyModel.__table__, models.TrialModel.__table__
        join = studies.outerjoin(trials, sqlalchemy.and_(trials.c.study_id == studies.c.study_id,
                                                         trials.c.trial_id > above))
        with self._backend.engine.connect() as conn:
            rows = conn.execute(sqlalchemy.select(trials.c.trial_id, trials.c.state)
                                .select_from(join).where(studies.c.study_id == study_id)
                                .order_by(trials.c.trial_id)).all()
        if not rows:
            raise KeyError(f"No study with study_id {study_id} exists.")
        return [(trial_id, state) for trial_id, state in rows if trial_id is not None]

    def _cached_finished(self, trial_id: int) -> bool:
        where = self._trial_id_to_study_id_and_number.get(trial_id)
        if where is None:
            return False
        trial = self._studies[where[0]].trials.get(where[1])
        return trial is not None and trial.state.is_finished()

    def refresh(self, study_id: int) -> None:
        """Make the next read of ``study_id`` go to the database."""
        self._last_refresh.pop(study_id, None)


def rdb_backend(storage: Any) -> RDBStorage | None:
    """The ``RDBStorage`` behind ``storage``: itself, or the one a :class:`BufferedStorage`
    (``backend``) or Optuna's ``_CachedStorage`` (``_backend``) wraps; ``None`` for any other
    storage (in-memory, journal)."""
    for candidate in (storage, getattr(storage, "backend", None), getattr(storage, "_backend", None)):
        if isinstance(candidate, RDBStorage):
            return candidate
    return None


class _AlreadyWritten(Exception):
    """A retried write found that its earlier attempt had committed (ends the transaction)."""


def earliest_with_value(conn: sqlalchemy.Connection, study_id: int,
                        value: float | None) -> tuple[int, int] | None:
    """``(trial_id, number)`` of the lowest-numbered COMPLETE trial of the study whose (first)
    value is ``value``: tuner's tie rule for "the best trial"."""
    if value is None:
        return None
    trials, values = models.TrialModel.__table__, models.TrialValueModel.__table__
    row = conn.execute(sqlalchemy.select(trials.c.trial_id, trials.c.number)
                       .join(values, values.c.trial_id == trials.c.trial_id)
                       .where(trials.c.study_id == study_id, trials.c.state == TrialState.COMPLETE,
                              values.c.objective == 0, values.c.value == value)
                       .order_by(trials.c.number).limit(1)).first()
    return None if row is None else (int(row[0]), int(row[1]))


def utcnow() -> datetime:
    """Naive UTC, as Optuna 5 stores trial timestamps."""
    return datetime.now(UTC).replace(tzinfo=None)


def trial_state(value: Any) -> TrialState | None:
    """A trial state as read from the database (its name, or already a ``TrialState``)."""
    if value is None or isinstance(value, TrialState):
        return value
    return TrialState[value]


def _written_before(conn: sqlalchemy.Connection, trial_id: int, final_json: str) -> bool:
    """Whether the trial's claim is already ``final`` (our token and the state we were about
    to write): our own write, whose commit we did not hear about because the connection
    dropped. (Another process that failed the trial as stale leaves our plain token.)"""
    claims = models.TrialSystemAttributeModel.__table__
    return conn.execute(sqlalchemy.select(claims.c.value_json).where(
        claims.c.trial_id == trial_id, claims.c.key == CLAIM_KEY)).scalar() == final_json


def upsert(conn: sqlalchemy.Connection, model: type, keys: tuple[str, ...],
           rows: list[dict[str, Any]]) -> None:
    """Multi-row ``INSERT ... ON CONFLICT (keys) DO UPDATE`` (SQLite >= 3.24 and PostgreSQL)."""
    if not rows:
        return
    table = model.__table__
    dialect = sqlite_dialect if conn.dialect.name == "sqlite" else postgresql_dialect
    statement = dialect.insert(table)
    updates = {c: statement.excluded[c] for c in rows[0] if c not in keys}
    conn.execute(statement.on_conflict_do_update(index_elements=list(keys), set_=updates), rows)


def _beat(conn: sqlalchemy.Connection, trial_id: int) -> None:
    """Create or refresh the trial's heartbeat row with the database clock."""
    table = models.TrialHeartbeatModel.__table__
    dialect = sqlite_dialect if conn.dialect.name == "sqlite" else postgresql_dialect
    statement = dialect.insert(table).values(trial_id=trial_id, heartbeat=sqlalchemy.func.now())
    conn.execute(statement.on_conflict_do_update(index_elements=["trial_id"],
                                                 set_={"heartbeat": sqlalchemy.func.now()}))


def _merge(old: _Pending, new: _Pending) -> _Pending:
    return _Pending(params={**old.params, **new.params},
                    intermediate={**old.intermediate, **new.intermediate},
                    user_attrs={**old.user_attrs, **new.user_attrs},
                    system_attrs={**old.system_attrs, **new.system_attrs},
                    heartbeat=old.heartbeat or new.heartbeat)

