"""``BufferedStorage`` against real SQLite files and PostgreSQL databases: what it writes is what a
plain ``RDBStorage`` reads back, in the few transactions it promises; what other processes
write reaches its cache (and only the trials that changed are loaded again); a trial another
process failed is not overwritten. Also pins the Optuna internals it relies on."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import optuna
import pytest
import sqlalchemy
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from tuner.storage import open_storage
from tuner.storage.buffered import BufferedStorage

LR = FloatDistribution(1e-4, 1.0, log=True)
OPT = CategoricalDistribution(["sgd", "adam"])


def plain(url: str) -> RDBStorage:
    return RDBStorage(url, skip_compatibility_check=True)


class Statements:
    """Counts the SQL statements an engine runs, by kind (``SELECT``, ``INSERT``, ...)."""

    def __init__(self, engine: sqlalchemy.Engine) -> None:
        self.seen: list[str] = []
        self.commits = 0
        sqlalchemy.event.listen(engine, "before_cursor_execute", self._statement)
        sqlalchemy.event.listen(engine, "commit", self._commit)

    def _statement(self, conn, cursor, statement, parameters, context, executemany) -> None:
        self.seen.append(statement.lstrip().split(None, 1)[0].upper())

    def _commit(self, conn) -> None:
        self.commits += 1


def run_trial(storage: BufferedStorage, study_id: int, lr: float, epochs: int = 3,
              state: TrialState = TrialState.COMPLETE) -> int:
    trial_id = storage.create_new_trial(study_id)
    storage.set_trial_param(trial_id, "lr", LR.to_internal_repr(lr), LR)
    storage.set_trial_param(trial_id, "optimizer", OPT.to_internal_repr("adam"), OPT)
    storage.set_trial_user_attr(trial_id, "seed", 7)
    storage.flush(trial_id)
    for epoch in range(1, epochs + 1):
        storage.set_trial_intermediate_value(trial_id, epoch, 0.5 + epoch / 100)
    storage.set_trial_user_attr(trial_id, "curve", {"val_accuracy": [0.51, 0.52, 0.53]})
    values = [0.53] if state == TrialState.COMPLETE else None
    assert storage.set_trial_state_values(trial_id, state, values)
    return trial_id


def loaded_by_refresh(storage: BufferedStorage, study_id: int) -> set[int]:
    """Refresh ``storage``'s view of the study; the ids of the trials it loaded in full."""
    loaded: set[int] = set()
    original = storage._backend._get_trials

    def spy(study_id, states, included_trial_ids, trial_id_greater_than):
        result = original(study_id, states, included_trial_ids, trial_id_greater_than)
        loaded.update(t._trial_id for t in result)
        return result

    storage._backend._get_trials = spy
    try:
        storage.refresh(study_id)
        storage.get_all_trials(study_id, deepcopy=False)
    finally:
        del storage._backend._get_trials
    return loaded


def test_optuna_internals_it_relies_on_are_there(sqlite_url: str):
    from optuna.storages._cached_storage import _StudyInfo
    from optuna.storages._rdb import models

    storage = open_storage(sqlite_url)
    for name in ("_get_trials", "_create_new_trial", "_set_trial_param", "engine"):
        assert hasattr(storage.backend, name), name
    for name in ("_read_trials_from_remote_storage", "_add_trials_to_cache", "_studies",
                 "_trial_id_to_study_id_and_number", "_study_id_and_number_to_trial_id", "_lock"):
        assert hasattr(storage, name), name
    info = _StudyInfo()
    assert info.last_finished_trial_id == -1 and info.unfinished_trial_ids == set()
    assert isinstance(info.trials, dict) and isinstance(info.param_distribution, dict)
    for model, column in ((models.TrialModel, "state"), (models.TrialParamModel, "distribution_json"),
                          (models.TrialIntermediateValueModel, "intermediate_value_type"),
                          (models.TrialUserAttributeModel, "value_json"),
                          (models.TrialSystemAttributeModel, "value_json"),
                          (models.TrialValueModel, "value_type"), (models.StudyModel, "study_id")):
        assert column in model.__table__.c, (model, column)
    assert hasattr(models.TrialIntermediateValueModel, "intermediate_value_to_stored_repr")
    assert hasattr(models.TrialValueModel, "value_to_stored_repr")


def test_a_trial_is_written_in_three_transactions_and_reads_back_exactly(storage_url: str):
    storage = open_storage(storage_url)
    study_id = storage.create_new_study([optuna.study.StudyDirection.MAXIMIZE], "s")
    counter = Statements(storage.backend.engine)
    trial_id = run_trial(storage, study_id, lr=0.01, epochs=40)
    # the trial row, the parameters with a first heartbeat, everything else with the state
    assert counter.commits == 3, counter.seen

    back = plain(storage_url).get_trial(trial_id)
    assert back.state == TrialState.COMPLETE and back.values == [0.53]
    assert back.params == {"lr": pytest.approx(0.01), "optimizer": "adam"}
    assert back.distributions == {"lr": LR, "optimizer": OPT}
    assert back.intermediate_values == {e: 0.5 + e / 100 for e in range(1, 41)}
    assert back.user_attrs == {"seed": 7, "curve": {"val_accuracy": [0.51, 0.52, 0.53]}}
    assert back.datetime_complete is not None
    # our own finished trial is served from the cache, identical to the database's
    ours = storage.get_trial(trial_id)
    assert (ours.params, ours.intermediate_values, ours.user_attrs, ours.values) == \
           (back.params, back.intermediate_values, back.user_attrs, back.values)


def test_a_running_trial_is_visible_to_others_after_flush(storage_url: str):
    storage = open_storage(storage_url)
    study_id = storage.create_new_study([optuna.study.StudyDirection.MAXIMIZE], "s")
    trial_id = storage.create_new_trial(study_id)
    storage.set_trial_param(trial_id, "lr", LR.to_internal_repr(0.1), LR)
    storage.set_trial_intermediate_value(trial_id, 1, 0.4)
    assert plain(storage_url).get_trial(trial_id).params == {}  # buffered, not yet written
    storage.flush(trial_id)
    seen = plain(storage_url).get_trial(trial_id)
    assert seen.state == TrialState.RUNNING
    assert seen.params == {"lr": pytest.approx(0.1)} and seen.intermediate_values == {1: 0.4}


def test_refresh_loads_what_others_wrote_and_not_our_own_finished_trials_again(storage_url: str):
    ours = open_storage(storage_url)
    study_id = ours.create_new_study([optuna.study.StudyDirection.MAXIMIZE], "s")
    other = open_storage(storage_url)  # another runner on the same study
    mine = [run_trial(ours, study_id, lr=0.01 * (i + 1)) for i in range(5)]
    theirs_done = run_trial(other, study_id, lr=0.5)
    theirs_running = other.create_new_trial(study_id)
    other.set_trial_param(theirs_running, "lr", LR.to_internal_repr(0.2), LR)
    other.flush(theirs_running)

    # the other runner's two trials are loaded; our five finished ones are not read back
    assert loaded_by_refresh(ours, study_id) == {theirs_done, theirs_running}
    trials = {t._trial_id: t for t in ours.get_all_trials(study_id, deepcopy=False)}
    assert set(trials) == {*mine, theirs_done, theirs_running}
    assert trials[theirs_done].state == TrialState.COMPLETE and trials[theirs_done].values == [0.53]
    assert trials[theirs_running].state == TrialState.RUNNING
    assert trials[theirs_running].params == {"lr": pytest.approx(0.2)}

    # nothing changed: only the other runner's running trial is loaded again
    assert loaded_by_refresh(ours, study_id) == {theirs_running}
    # it reports and finishes: the change reaches us; our finished trials are never re-loaded
    other.set_trial_intermediate_value(theirs_running, 1, 0.3)
    assert other.set_trial_state_values(theirs_running, TrialState.PRUNED)
    assert loaded_by_refresh(ours, study_id) == {theirs_running}
    trial = ours.get_trial(theirs_running)
    assert trial.state == TrialState.PRUNED and trial.intermediate_values == {1: 0.3}
    assert loaded_by_refresh(ours, study_id) == set()
    # our next trial and another runner's new one
    newer = run_trial(ours, study_id, lr=0.03)
    new_theirs = run_trial(other, study_id, lr=0.04, state=TrialState.PRUNED)
    assert loaded_by_refresh(ours, study_id) == {new_theirs}
    states = {t._trial_id: t.state for t in ours.get_all_trials(study_id, deepcopy=False)}
    assert states[newer] == TrialState.COMPLETE and states[new_theirs] == TrialState.PRUNED
    assert len(states) == 9


def test_listing_by_finished_states_includes_trials_finished_elsewhere(storage_url: str):
    ours = open_storage(storage_url)
    study_id = ours.create_new_study([optuna.study.StudyDirection.MAXIMIZE], "s")
    other = open_storage(storage_url)
    first = run_trial(ours, study_id, lr=0.01)
    assert [t._trial_id for t in ours.get_all_trials(study_id, states=(TrialState.COMPLETE,))] == [first]
    second = run_trial(other, study_id, lr=0.02)
    ours.refresh(study_id)
    assert [t._trial_id for t in ours.get_all_trials(study_id, states=(TrialState.COMPLETE,))] == \
           [first, second]


def test_a_trial_failed_by_another_process_is_not_overwritten(storage_url: str):
    ours = open_storage(storage_url)
    study_id = ours.create_new_study([optuna.study.StudyDirection.MAXIMIZE], "s")
    trial_id = ours.create_new_trial(study_id)
    ours.set_trial_param(trial_id, "lr", LR.to_internal_repr(0.1), LR)
    ours.flush(trial_id)
    # another runner decides our heartbeat is stale and fails the trial
    assert plain(storage_url).set_trial_state_values(trial_id, TrialState.FAIL)
    ours.set_trial_intermediate_value(trial_id, 1, 0.9)
    assert ours.flush_older_than(0.0) == [trial_id]  # reported lost, no longer ours
    assert trial_id not in ours.owned_trial_ids()
    back = plain(storage_url).get_trial(trial_id)
    assert back.state == TrialState.FAIL and back.intermediate_values == {}


def test_finishing_a_trial_failed_elsewhere_raises_and_writes_nothing(storage_url: str):
    ours = open_storage(storage_url)
    study_id = ours.create_new_study([optuna.study.StudyDirection.MAXIMIZE], "s")
    trial_id = ours.create_new_trial(study_id)
    ours.flush(trial_id)
    assert plain(storage_url).set_trial_state_values(trial_id, TrialState.FAIL)
    ours.set_trial_user_attr(trial_id, "curve", [1, 2])
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        ours.set_trial_state_values(trial_id, TrialState.COMPLETE, [0.9])
    back = plain(storage_url).get_trial(trial_id)
    assert back.state == TrialState.FAIL and back.values is None and back.user_attrs == {}


def test_reading_a_deleted_study_raises_key_error(storage_url: str):
    ours = open_storage(storage_url)
    study_id = ours.create_new_study([optuna.study.StudyDirection.MAXIMIZE], "gone")
    run_trial(ours, study_id, lr=0.01)
    plain(storage_url).delete_study(study_id)
    ours.refresh(study_id)
    with pytest.raises(KeyError):
        ours.get_all_trials(study_id)


def test_a_new_storage_reads_an_existing_study(storage_url: str):
    writer = open_storage(storage_url)
    study_id = writer.create_new_study([optuna.study.StudyDirection.MAXIMIZE], "s")
    done = [run_trial(writer, study_id, lr=0.01), run_trial(writer, study_id, lr=0.02)]
    reader = open_storage(storage_url)  # nothing of the study cached yet
    assert [t._trial_id for t in reader.get_all_trials(study_id)] == done
    assert loaded_by_refresh(reader, study_id) == set()


def test_a_retry_lost_between_fail_and_enqueue_is_queued_by_the_next_sweep(storage_url: str):
    """Failing a trial and queuing its retry are two transactions: if the connection drops in
    between (the soak saw it once), the next stale-trial sweep queues the retry, once."""
    from tuner.storage.coordination import enqueue_retry, fail_trial, requeue_missing_retries

    storage = open_storage(storage_url)
    study = optuna.create_study(study_name="lost", storage=storage)

    def running(lr: float) -> int:  # a running trial of another (dead) runner
        trial_id = storage.create_new_trial(study._study_id)
        storage.set_trial_param(trial_id, "lr", LR.to_internal_repr(lr), LR)
        storage.flush(trial_id)
        storage.release(trial_id)
        return trial_id

    first = running(0.01)
    assert fail_trial(storage, first, "stale heartbeat: test", retry=True)
    # ... and the enqueue_retry that should follow never happens
    assert requeue_missing_retries(study, storage, max_retry=2, older_than=3600) == []  # too new
    assert requeue_missing_retries(study, storage, max_retry=2, older_than=0) == [0]
    assert requeue_missing_retries(study, storage, max_retry=2, older_than=0) == []  # once only
    trials = storage.backend.get_all_trials(study._study_id)
    retry = trials[-1]
    assert retry.state == TrialState.WAITING and retry.params == trials[0].params
    assert retry.system_attrs["retry_history"] == [0] and retry.system_attrs["failed_trial"] == 0
    # a trial failed without wanting a retry (an exception) is left alone
    other = running(0.02)
    assert fail_trial(storage, other, "exception: test")
    assert requeue_missing_retries(study, storage, max_retry=2, older_than=0) == []
    # a retry queued normally is not queued again
    third = running(0.03)
    assert fail_trial(storage, third, "stale heartbeat: test", retry=True)
    assert enqueue_retry(study, storage.backend.get_trial(third), 2)
    assert requeue_missing_retries(study, storage, max_retry=2, older_than=0) == []


def test_only_busy_sqlite_errors_are_worth_retrying(tmp_path):
    """SQLite raises OperationalError for a locked database and for a missing table alike;
    only the first is retried (a runner on ``sqlite://`` used to wait out max_db_outage, then
    say it had lost the connection)."""
    import sqlite3

    from tuner.storage.resilience import Resilient, is_transient

    path = tmp_path / "busy.db"
    engine = sqlalchemy.create_engine(f"sqlite:///{path}", connect_args={"timeout": 0})
    with engine.begin() as conn:
        conn.execute(sqlalchemy.text("CREATE TABLE t (x INTEGER)"))
    holder = sqlite3.connect(path)
    holder.execute("BEGIN IMMEDIATE")  # holds the write lock
    with pytest.raises(sqlalchemy.exc.OperationalError) as locked:
        with engine.begin() as conn:
            conn.execute(sqlalchemy.text("INSERT INTO t VALUES (1)"))
    holder.rollback()
    holder.close()
    assert "locked" in str(locked.value) and is_transient(locked.value)
    with pytest.raises(sqlalchemy.exc.OperationalError) as missing:
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT * FROM no_such_table"))
    assert not is_transient(missing.value)
    calls = []

    def broken():
        calls.append(1)
        raise missing.value

    with pytest.raises(sqlalchemy.exc.OperationalError):  # raised at once, not retried
        Resilient(f"sqlite:///{path}", max_outage=30).call("read", broken)
    assert calls == [1]
    engine.dispose()


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:",
                                 "sqlite:///file::memory:?cache=shared"])
def test_in_memory_sqlite_is_refused_at_once(url):
    import time

    from tuner.errors import StorageError

    started = time.monotonic()
    with pytest.raises(StorageError, match="in-memory SQLite database"):
        open_storage(url)
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("url", ["postgresql+psycopg://tuner:s3cr3t@127.0.0.1:5432",
                                 "postgresql://tuner:s3cr3t@127.0.0.1/"])
def test_a_postgres_url_without_a_database_is_refused(url):
    """libpq would pick a database itself (the user's name, here ``postgres``'s own) and the
    first command would create the tables there."""
    from tuner.errors import StorageError

    with pytest.raises(StorageError, match="names no database") as info:
        open_storage(url)
    assert "s3cr3t" not in str(info.value) + info.value.hint and "/tuner" in info.value.hint


def test_a_folder_as_the_sqlite_file_is_a_clear_error(tmp_path):
    from tuner.errors import StorageError

    with pytest.raises(StorageError, match="is a folder, not a database file"):
        open_storage(f"sqlite:///{tmp_path}")


def test_an_empty_storage_flag_is_an_error_not_the_default(monkeypatch):
    """``--storage "$TUNER_STORAGE"`` pasted from a hint, with the variable unset, must not
    open ./tuner.db instead of the study's database."""
    from tuner.errors import StorageError
    from tuner.storage.urls import DEFAULT_URL, resolve_url

    monkeypatch.delenv("TUNER_STORAGE", raising=False)
    for empty in ("", "  "):
        with pytest.raises(StorageError, match="--storage is empty") as info:
            resolve_url(empty, "sqlite:///from-the-file.db")
        assert "export TUNER_STORAGE" in info.value.hint
    assert resolve_url(None) == DEFAULT_URL


def test_a_sqlite_file_of_another_application_is_never_written(tmp_path):
    """Not by the commands that read (refused before), nor by `tuner run` / `tuner init`: no
    Optuna tables added, the journal mode unchanged."""
    import sqlite3

    from tuner.errors import StorageError

    path = tmp_path / "app.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY)")
    for must_exist in (False, True):
        with pytest.raises(StorageError, match=r"not a tuner database: it has tables \(invoices\)"):
            open_storage(f"sqlite:///{path}", must_exist=must_exist)
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT name FROM sqlite_master").fetchall() == [("invoices",)]
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("delete",)
    open_storage(f"sqlite:///{tmp_path / 'new.db'}")  # a new file is created as before


_OPEN_AT_ONCE = """
import sys, time
from pathlib import Path
go = Path(sys.argv[2])
while not go.exists():
    time.sleep(0.001)
from tuner.storage import open_storage
open_storage(sys.argv[1]).backend.engine.dispose()
print("ok")
"""


def test_concurrent_first_use_of_a_fresh_sqlite_file(tmp_path):
    """Processes opening a new SQLite file at the same moment all create (or find) the tables:
    table creation is serialized by a file lock next to the database (it raced: 'UNIQUE
    constraint failed: alembic_version.version_num', 'table studies already exists')."""
    import subprocess
    import sys
    import time

    from conftest import tuner_env

    for attempt in range(3):  # three fresh files: the race needs the same moment
        url = f"sqlite:///{tmp_path / f'fresh{attempt}.db'}"
        go = tmp_path / f"go{attempt}"
        procs = [subprocess.Popen([sys.executable, "-c", _OPEN_AT_ONCE, url, str(go)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  env=tuner_env()) for _ in range(4)]
        time.sleep(1.5)  # all of them past their imports, waiting for the go
        go.touch()
        for proc in procs:
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0 and out.strip() == "ok", err[-2000:]
        assert plain(url).get_all_studies() == []


# --- windows of a dropped connection, reproduced deterministically -----------------------------
#
# A write whose commit reached the database but whose answer was lost (the connection dropped
# in between) is retried by the runner. To reproduce that window without timing luck, a test
# makes the write for real and then gives the storage back its state from before the call, as
# the failed call leaves it (the trial still owned, its data still pending).


def unheard(storage: BufferedStorage, trial_id: int, write) -> None:
    """Run ``write`` (it commits), then put ``storage`` back as if the answer had been lost."""
    import copy

    before = copy.deepcopy(storage._owned[trial_id])
    write()
    storage._owned[trial_id] = before


def owned_trial(storage: BufferedStorage, study: optuna.Study, lr: float) -> int:
    trial_id = storage.create_new_trial(study._study_id)
    storage.set_trial_param(trial_id, "lr", LR.to_internal_repr(lr), LR)
    storage.flush(trial_id)
    return trial_id


def test_a_put_back_retried_after_a_lost_answer_never_takes_another_runners_claim(storage_url):
    """Runner A puts its trial back in the queue; the commit lands but A hears an error; runner
    B claims the trial; A retries the put-back. It used to succeed (the trial was only checked
    to be RUNNING), putting B's running trial back in the queue: a third runner then ran it
    again beside B, and it was not counted while queued, so the budget could overshoot."""
    a, b = open_storage(storage_url), open_storage(storage_url)
    study_a = optuna.create_study(study_name="s", storage=a)
    study_b = optuna.load_study(study_name="s", storage=b)
    trial_id = owned_trial(a, study_a, 0.1)
    unheard(a, trial_id, lambda: a.set_trial_state_values(trial_id, TrialState.WAITING))
    taken = study_b.ask()  # B claims it
    assert taken._trial_id == trial_id and taken.params == {"lr": pytest.approx(0.1)}
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        a.set_trial_state_values(trial_id, TrialState.WAITING)  # A's retry
    assert plain(storage_url).get_trial(trial_id).state == TrialState.RUNNING  # still B's
    # and when nobody took it, A's retry finds its own write and succeeds
    again = owned_trial(a, study_a, 0.2)
    unheard(a, again, lambda: a.set_trial_state_values(again, TrialState.WAITING))
    assert a.set_trial_state_values(again, TrialState.WAITING)
    assert plain(storage_url).get_trial(again).state == TrialState.WAITING
    assert again not in a.owned_trial_ids()
    # B finishes its trial normally
    b.set_trial_intermediate_value(trial_id, 1, 0.5)
    assert b.set_trial_state_values(trial_id, TrialState.COMPLETE, [0.5])


def test_a_fail_retried_after_a_lost_answer_still_queues_the_retry(storage_url):
    """The FAIL committed but the runner heard an error: its retry of fail-and-requeue used to
    find the trial finished, give up, and leave the retry to a sweep a grace period later."""
    from tuner.storage.coordination import enqueue_retry, fail_trial

    storage = open_storage(storage_url)
    study = optuna.create_study(study_name="s", storage=storage)
    trial_id = owned_trial(storage, study, 0.1)
    unheard(storage, trial_id, lambda: fail_trial(storage, trial_id, "worker process died (test)",
                                                  retry=True, max_retry=2))
    assert fail_trial(storage, trial_id, "worker process died (test)", retry=True, max_retry=2)
    assert enqueue_retry(study, storage.backend.get_trial(trial_id), 2)
    trials = plain(storage_url).get_all_trials(study._study_id)
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING]
    assert trials[1].system_attrs["failed_trial"] == 0
    # another process failing our trial as stale is not mistaken for our own write
    other = owned_trial(storage, study, 0.2)
    assert plain(storage_url).set_trial_state_values(other, TrialState.FAIL)
    assert not fail_trial(storage, other, "worker process died (test)", retry=True, max_retry=2)


def test_failing_a_trial_decides_its_retry_without_touching_the_cached_trial(storage_url):
    """``fail_trial`` used to write the new ``fail_reason`` into the trial ``get_trial``
    returned to decide its retry, and for a trial the cache holds as finished (another runner
    finished it after a sweep listed it as stale) that is the cache's own object: the cache then
    showed a COMPLETE trial with a FAIL reason the database never had. Whether the failure is
    an interruption (no retry budget used) is an explicit flag, recorded with the FAIL, so
    queuing the retry decides the same."""
    from tuner.storage.coordination import ATTR_INTERRUPTED, enqueue_retry, fail_trial

    storage, other = open_storage(storage_url), open_storage(storage_url)
    study = optuna.create_study(study_name="s", storage=storage)
    other_study = optuna.load_study(study_name="s", storage=other)
    done = owned_trial(other, other_study, 0.3)
    assert other.set_trial_state_values(done, TrialState.COMPLETE, [0.5])
    storage.refresh(study._study_id)
    cached = storage.get_all_trials(study._study_id, deepcopy=False)[0]
    assert storage.get_trial(done) is cached  # the cache's own object
    before = dict(cached.user_attrs)
    assert not fail_trial(storage, done, "stale heartbeat: test", retry=True, max_retry=2)
    assert cached.user_attrs == before and cached.state == TrialState.COMPLETE
    assert storage.get_trial(done).user_attrs == before

    trial_id = owned_trial(storage, study, 0.1)
    storage.release(trial_id)  # its runner died
    # max_retry = 0: only an interruption is re-queued; the reason does not say so, the flag does
    assert fail_trial(storage, trial_id, "runner stopped", retry=True, max_retry=0, interrupted=True)
    failed = storage.backend.get_trial(trial_id)
    assert failed.user_attrs[ATTR_INTERRUPTED] is True and failed.user_attrs["retry_wanted"]
    assert enqueue_retry(study, failed, 0)
    # not an interruption, although the reason reads like one: counted, so not re-queued
    retry = study.ask()
    assert retry.params == {"lr": 0.1}
    assert fail_trial(storage, retry._trial_id, "interrupted by a test", retry=True, max_retry=0,
                      interrupted=False)
    failed = storage.backend.get_trial(retry._trial_id)
    assert failed.user_attrs[ATTR_INTERRUPTED] is False and "retry limit" in failed.user_attrs["no_retry"]
    assert not enqueue_retry(study, failed, 0)


def test_a_retry_is_queued_once_however_often_it_is_asked_for(storage_url):
    """Two runners' sweeps, a runner's own enqueue and a sweep, or an enqueue retried after its
    commit was not heard of: one retry, never two (they ran the same configuration twice)."""
    from tuner.storage.coordination import enqueue_retry, fail_trial, requeue_missing_retries

    storage, other = open_storage(storage_url), open_storage(storage_url)
    study = optuna.create_study(study_name="s", storage=storage)
    trial_id = owned_trial(storage, study, 0.1)
    storage.release(trial_id)  # its runner died
    assert fail_trial(storage, trial_id, "stale heartbeat: test", retry=True, max_retry=2)
    failed = storage.backend.get_trial(trial_id)
    assert enqueue_retry(study, failed, 2)
    assert enqueue_retry(study, failed, 2)  # the same call again: nothing more
    other_study = optuna.load_study(study_name="s", storage=other)
    assert enqueue_retry(other_study, other.backend.get_trial(trial_id), 2)
    assert requeue_missing_retries(other_study, other, max_retry=2, older_than=0) == []
    assert [t.state for t in plain(storage_url).get_all_trials(study._study_id)] == \
           [TrialState.FAIL, TrialState.WAITING]


def test_a_trial_put_back_long_ago_is_not_stale_once_claimed_again(storage_url):
    """A trial put back in the queue keeps its heartbeat row. Claimed again, it looked stale
    (the old heartbeat) until its first flush, and another runner's sweep in that window
    failed it, and the claiming runner then crashed saving its parameters."""
    from tuner.storage.coordination import fail_stale_trials

    a, b, c = (open_storage(storage_url) for _ in range(3))
    study_a = optuna.create_study(study_name="s", storage=a)
    trial_id = owned_trial(a, study_a, 0.1)
    assert a.set_trial_state_values(trial_id, TrialState.WAITING)
    with a.backend.engine.begin() as conn:  # put back an hour ago
        conn.execute(sqlalchemy.text("UPDATE trial_heartbeats SET heartbeat = heartbeat - "
                                     "INTERVAL '1 hour'" if "postgresql" in storage_url else
                                     "UPDATE trial_heartbeats SET heartbeat = "
                                     "datetime(heartbeat, '-1 hour')"))
    claimed = optuna.load_study(study_name="s", storage=b).ask()
    assert claimed._trial_id == trial_id
    sweeper = optuna.load_study(study_name="s", storage=c)
    assert fail_stale_trials(sweeper, c, grace_seconds=60, max_retry=2) == []
    b.flush(trial_id)
    assert plain(storage_url).get_trial(trial_id).state == TrialState.RUNNING


def test_the_retry_limit_is_enforced_and_explained_and_interruptions_do_not_use_it(storage_url):
    """max_retry = 2: a configuration that failed three times (stale heartbeat, dead worker)
    is not queued again, and the last FAIL says so (``no_retry``); a sweep does not queue it
    either. Ctrl-C / SIGTERM interruptions do not use the budget."""
    from tuner.storage.coordination import (
        enqueue_retry,
        fail_stale_trials,
        fail_trial,
        requeue_missing_retries,
    )

    storage = open_storage(storage_url)
    study = optuna.create_study(study_name="s", storage=storage)

    def fail_next(reason: str) -> optuna.trial.FrozenTrial:
        """Claim the next queued trial (or a new one), then fail it with ``reason``."""
        trial = study.ask()
        if "lr" not in trial.params:
            trial.suggest_float("lr", 1e-4, 1.0, log=True)
        storage.flush(trial._trial_id)
        fail_trial(storage, trial._trial_id, reason, retry=True, max_retry=2)
        failed = storage.backend.get_trial(trial._trial_id)
        enqueue_retry(study, failed, 2)
        return failed

    chain = [fail_next("interrupted by SIGTERM") for _ in range(3)]  # not counted
    chain += [fail_next(r) for r in ("stale heartbeat: test", "worker process died (test)")]
    assert all(t.user_attrs.get("retry_wanted") for t in chain)
    last = fail_next("stale heartbeat: test")  # the third counted failure
    assert "no_retry" not in chain[-1].user_attrs
    assert last.user_attrs["no_retry"] == ("retry limit reached: its configuration failed 3 "
                                           "times (max_retry = 2, interruptions not counted)")
    assert "retry_wanted" not in last.user_attrs
    assert requeue_missing_retries(study, storage, max_retry=2, older_than=0) == []
    trials = plain(storage_url).get_all_trials(study._study_id)
    assert [t.state for t in trials] == [TrialState.FAIL] * 6  # nothing queued after the last
    assert len({t.params["lr"] for t in trials}) == 1
    assert trials[-1].system_attrs["retry_history"] == [0, 1, 2, 3, 4]
    # a trial that failed before its parameters were saved: nothing to retry, and it says so
    bare = storage.create_new_trial(study._study_id)
    storage.release(bare)  # its runner died mid-claim
    failed = fail_stale_trials(study, storage, grace_seconds=0, max_retry=2, all_running=True)
    assert [(f.number, f.no_retry) for f in failed] == [
        (6, "no parameters to retry: it failed before its configuration was saved")]


def test_the_runner_lock_says_who_holds_it(storage_url):
    """One helper names the lock a runner holds on its study (``tuner run``, ``tuner doctor``
    and ``tuner delete`` take the same one), and a refused lock says who holds it."""
    from tuner.errors import LockHeldError
    from tuner.storage.coordination import runner_lock

    first, second = open_storage(storage_url), open_storage(storage_url)
    with runner_lock(first, "s"):
        refused = runner_lock(second, "s")
        with pytest.raises(LockHeldError, match="study 's' is already running in another process"):
            refused.acquire()
        expected = "advisory lock" if "postgresql" in storage_url else f"pid {os.getpid()} on "
        assert expected in refused.holder
        with runner_lock(second, "other"):  # one lock per study
            pass
    with runner_lock(second, "s"):  # released
        pass


def test_a_retry_is_queued_through_optunas_own_cache_of_the_storage_too(storage_url):
    """``RetryCallback`` runs with whatever storage the study has, also Optuna's own cache over
    tuner's ``RDBStorage`` (``optuna.storages.fail_stale_trials`` in another tool): the budget
    lock found no engine on it. One ``rdb_backend`` finds the database behind any wrapper."""
    from optuna.storages._cached_storage import _CachedStorage

    from tuner.storage import rdb_backend
    from tuner.storage.coordination import enqueue_retry

    storage = open_storage(storage_url)
    cached = _CachedStorage(storage.backend)
    assert rdb_backend(cached) is rdb_backend(storage) is storage.backend
    assert rdb_backend(optuna.storages.InMemoryStorage()) is None
    study = optuna.create_study(study_name="s", storage=cached)
    trial = study.ask()
    trial.suggest_float("lr", 1e-4, 1.0, log=True)
    study.tell(trial, state=TrialState.FAIL)
    assert enqueue_retry(study, cached.get_trial(trial._trial_id), 2)
    assert [t.state for t in plain(storage_url).get_all_trials(study._study_id)] == \
           [TrialState.FAIL, TrialState.WAITING]


def test_delete_waits_for_a_flush_that_writes_its_trial_row_twice(pg_url: str):
    """A runner's end-of-trial flush updates its trial's row twice in one transaction (the guard,
    then the state); PostgreSQL re-checks the foreign key of a row this transaction created, a
    KEY SHARE lock on the study row. ``delete_study`` held that row ``FOR UPDATE`` while waiting
    for the trial's row: a deadlock (seen in CI under ``tuner delete --force``). Now the delete
    waits for the flush, then deletes everything."""
    from tuner.storage.coordination import delete_study

    storage = open_storage(pg_url)
    study_id = storage.create_new_study([optuna.study.StudyDirection.MAXIMIZE], "s")
    run_trial(storage, study_id, lr=0.01)
    trial_id = storage.create_new_trial(study_id)
    storage.flush(trial_id)
    trials = sqlalchemy.table("trials", sqlalchemy.column("trial_id"), sqlalchemy.column("state"))
    engine = sqlalchemy.create_engine(pg_url)
    deleted: list[object] = []
    with engine.connect() as flush:
        with flush.begin():
            flush.execute(trials.update().where(trials.c.trial_id == trial_id)
                          .values(state="RUNNING"))  # the guard: the row is ours
            deleting = threading.Thread(target=lambda: deleted.append(
                _capture(lambda: delete_study(storage, study_id))))
            deleting.start()
            deadline = time.monotonic() + 10
            while not _waiting_on_a_lock(engine) and time.monotonic() < deadline:
                time.sleep(0.02)
            assert _waiting_on_a_lock(engine), "the delete did not reach the trial's row lock"
            flush.execute(trials.update().where(trials.c.trial_id == trial_id)
                          .values(state="COMPLETE"))  # the state: deadlocked here before
        deleting.join(timeout=30)
    assert deleted == [2], deleted
    with engine.connect() as conn:
        assert conn.execute(sqlalchemy.text("SELECT count(*) FROM trials")).scalar() == 0
        assert conn.execute(sqlalchemy.text("SELECT count(*) FROM studies")).scalar() == 0
    engine.dispose()


def _capture(call):
    try:
        return call()
    except Exception as exc:  # the test asserts on it
        return exc


def _waiting_on_a_lock(engine: sqlalchemy.Engine) -> bool:
    with engine.connect() as conn:
        return bool(conn.execute(sqlalchemy.text(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock'")).scalar())


def test_a_stale_fail_never_overwrites_a_trial_its_runner_just_completed(storage_url: str):
    """`tuner doctor --fail-stale` (or a sweep) on a runner that is late but alive: the runner's
    COMPLETE is being committed. On SQLite the fail read RUNNING first (no FOR UPDATE there),
    then wrote FAIL over the committed COMPLETE: a finished result was lost and a retry queued.
    Now the state check and the write are one statement, which waits for the runner."""
    from tuner.storage.coordination import fail_trial

    runner, doctor = open_storage(storage_url), open_storage(storage_url)
    study = optuna.create_study(study_name="s", storage=runner)
    trial_id = owned_trial(runner, study, 0.1)
    trials = sqlalchemy.table("trials", sqlalchemy.column("trial_id"), sqlalchemy.column("state"))
    outcome: list[object] = []
    with runner.backend.engine.begin() as conn:  # the runner's end-of-trial write, in flight
        conn.execute(trials.update().where(trials.c.trial_id == trial_id).values(state="COMPLETE"))
        failing = threading.Thread(target=lambda: outcome.append(_capture(lambda: fail_trial(
            doctor, trial_id, "stale heartbeat: failed by tuner doctor", retry=True, max_retry=2))))
        failing.start()
        time.sleep(0.5)  # the fail has read (old code) or is waiting for the row (new code)
    failing.join(timeout=60)
    assert outcome == [False]
    back = plain(storage_url).get_trial(trial_id)
    assert back.state == TrialState.COMPLETE and "fail_reason" not in back.user_attrs


def test_a_claim_whose_answer_is_lost_is_put_back_in_the_queue(storage_url: str):
    """The claim of a WAITING trial commits, then the read after it fails (a dropped
    connection): the trial was RUNNING under our claim token, owned by nobody, and the retried
    claim took a fresh trial. On SQLite the run then waited for it for ever; on PostgreSQL a
    stale-heartbeat sweep failed it a grace period later, using one of its retries."""
    storage = open_storage(storage_url)
    study = optuna.create_study(study_name="s", storage=storage)
    study.enqueue_trial({"lr": 0.3})
    read = storage._backend.get_trial
    calls = []

    def read_fails_once(trial_id):
        calls.append(trial_id)
        if len(calls) == 1:
            raise sqlalchemy.exc.OperationalError("SELECT", {}, Exception("connection dropped"))
        return read(trial_id)

    storage._backend.get_trial = read_fails_once
    with pytest.raises(sqlalchemy.exc.OperationalError):
        study.ask()
    queued_id = calls[0]
    assert plain(storage_url).get_trial(queued_id).state == TrialState.RUNNING
    assert storage.owned_trial_ids() == []
    assert storage.put_back_unsettled_claims() == [queued_id]
    assert plain(storage_url).get_trial(queued_id).state == TrialState.WAITING
    assert storage.put_back_unsettled_claims() == []  # settled: nothing more to do
    again = study.ask()  # the retried claim takes the queued configuration, not a fresh one
    assert again._trial_id == queued_id
    assert again.suggest_float("lr", 1e-4, 1.0, log=True) == pytest.approx(0.3)


def test_a_night_lock_whose_connection_was_cut_is_noticed(pg_url: str):
    """The night's lock is a session advisory lock on an idle connection; a server restart or
    failover cut it and the server released it, unnoticed: a second host could start the same
    night and both stored verdicts. Before the verdict it is checked and taken again, or the
    night is left to the process that has it."""
    from tuner.errors import LockHeldError
    from tuner.nightly.run import _keep_the_night
    from tuner.storage.coordination import NamedLock

    storage = open_storage(pg_url)
    lock = NamedLock(storage, "nightly:n-2026-12-01", what="the nightly sweep 'n-2026-12-01'")
    lock.acquire()
    assert lock.still_held()
    _keep_the_night(lock)  # held: nothing to do

    def cut() -> None:
        pid = lock._conn.execute(sqlalchemy.text("SELECT pg_backend_pid()")).scalar()
        lock._conn.rollback()
        with storage.backend.engine.connect() as conn:
            conn.execute(sqlalchemy.text(f"SELECT pg_terminate_backend({pid})"))

    cut()
    assert not lock.still_held()
    _keep_the_night(lock)  # nobody took it meanwhile: taken again
    assert lock.still_held()
    cut()
    other = NamedLock(open_storage(pg_url), lock.name, what=lock.what).acquire()
    with pytest.raises(LockHeldError, match="another process has taken the night over"):
        _keep_the_night(lock)
    other.release()
    lock.release()


# --- a database the user may not write -----------------------------------------------------------

NOBODY = 65534


def _as_nobody(*args: str, cwd: str, home: str) -> subprocess.CompletedProcess[str]:
    from conftest import tuner_env

    return subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                           sys.executable, "-m", "tuner", *args], cwd=cwd,
                          env=tuner_env(HOME=home), capture_output=True, text=True, timeout=120)


@pytest.fixture
def read_only_db():
    """A tuner SQLite file (with a finished study) in a folder that only root may write; the
    commands run as ``nobody`` (root writes anything, so root cannot see the error)."""
    import shutil
    import tempfile

    from conftest import REPO, run_tuner, write_study

    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run a command as another user")
    folder = tempfile.mkdtemp(prefix="tuner-ro-", dir="/tmp")
    home = tempfile.mkdtemp(prefix="tuner-ro-home-", dir="/tmp")  # numba's cache, if it needs one
    os.chmod(folder, 0o755)
    os.chmod(home, 0o777)
    try:
        study = write_study(__import__("pathlib").Path(folder) / "s.toml", name="ro",
                            n_trials=1, epochs=1)
        os.chmod(study, 0o644)
        url = f"sqlite:///{folder}/ro.db"
        run_tuner("run", study, "--storage", url, "-q", check=True)
        probe = _as_nobody("--version", cwd=folder, home=home)
        if probe.returncode != 0:
            pytest.skip(f"user nobody cannot run tuner from {REPO}: {probe.stderr[-200:]}")
        yield folder, url, str(study), home
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(home, ignore_errors=True)


def test_a_read_only_sqlite_database_is_one_clear_error(read_only_db):
    folder, url, study, home = read_only_db
    before = sorted(os.listdir(folder))
    for args in (("run", study, "--storage", url, "-n", "2"), ("ls", "--storage", url),
                 ("show", "ro", "--storage", url), ("delete", "ro", "-y", "--storage", url)):
        proc = _as_nobody(*args, cwd=folder, home=home)
        assert proc.returncode == 3, (args, proc.stderr)
        assert "Traceback" not in proc.stderr, (args, proc.stderr)
        assert "read-only" in proc.stderr and "writable" in proc.stderr, (args, proc.stderr)
    assert sorted(os.listdir(folder)) == before  # no lock folder, nothing else written
    assert len(optuna.load_study(study_name="ro", storage=url).trials) == 1


def test_a_read_only_file_in_a_writable_folder_can_be_read(read_only_db):
    """Commands that only read take no schema lock (no ``.locks`` folder appears) and leave
    the file alone; SQLite itself only needs its -wal/-shm files beside it."""
    import shutil

    folder, url, study, home = read_only_db
    shutil.rmtree(f"{folder}/ro.db.locks", ignore_errors=True)
    os.chmod(folder, 0o777)
    os.chmod(f"{folder}/ro.db", 0o444)
    shown = _as_nobody("ls", "--storage", url, cwd=folder, home=home)
    assert shown.returncode == 0 and "ro" in shown.stdout, shown.stderr
    assert _as_nobody("show", "ro", "--storage", url, cwd=folder, home=home).returncode == 0
    assert not os.path.exists(f"{folder}/ro.db.locks")
    refused = _as_nobody("run", study, "--storage", url, "-n", "2", cwd=folder, home=home)
    assert refused.returncode == 3 and f"{folder}/ro.db (from {url}) is read-only" in refused.stderr


def test_equal_best_values_name_the_earliest_trial_everywhere(storage_url, monkeypatch):
    """Among trials with the best value, the best trial is the earliest, for `study.best_trial`
    (show, best), `tuner ls` and the per-group tables (groups with equal bests: the one whose
    best trial came first)."""
    from tuner import results

    storage = open_storage(storage_url)
    study = optuna.create_study(study_name="ties", storage=storage, direction="maximize")
    dist = {"optimizer": CategoricalDistribution(["sgd", "adam", "rmsprop"])}
    for optimizer, value in (("adam", 0.5), ("rmsprop", 0.9), ("sgd", 0.9), ("adam", 0.9),
                             ("sgd", 0.7)):
        study.add_trial(optuna.trial.create_trial(
            params={"optimizer": optimizer}, distributions=dist, value=value,
            user_attrs={"config": {"optimizer": optimizer}}))
    for _ in range(3):
        assert optuna.load_study(study_name="ties", storage=storage).best_trial.number == 1
    # the database's query may return any of the tied trials (PostgreSQL: differently from
    # call to call); say it returned #3
    third = study.trials[3]._trial_id
    monkeypatch.setattr(storage.backend, "_get_best_trial_id", lambda *_: third)
    assert storage.get_best_trial(study._study_id).number == 1
    (row,) = results.list_studies(storage)
    assert (row.best_value, row.best_trial) == (0.9, 1)
    groups = results.best_by(study, "optimizer")
    assert [(g.value, g.best_trial) for g in groups] == [("rmsprop", 1), ("sgd", 2), ("adam", 3)]
