"""``BufferedStorage`` against real SQLite files and PostgreSQL databases: what it writes is what a
plain ``RDBStorage`` reads back, in the few transactions it promises; what other processes
write reaches its cache (and only the trials that changed are loaded again); a trial another
process failed is not overwritten. Also pins the Optuna internals it relies on."""

from __future__ import annotations

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
