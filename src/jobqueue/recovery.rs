//! Start-up recovery (spec jobs.md §14.1): nothing runs after a crash, so jobs that were waiting
//! go back to the queue and jobs that were running are failed as an unclean shutdown.

use super::job::{ERROR_MSG_CANCELED, Job, JobId, Status, Timestamp};
use super::{State, Store, StoreError};
use serde_json::json;

pub(super) async fn recover(store: &Store, state: &mut State) -> Result<(), StoreError> {
    let moved = store.migrate()?;
    if moved > 0 {
        tracing::info!(
            jobs = moved,
            "moved finished jobs to the finished-jobs tree"
        );
    }
    let now = Timestamp::now();
    let mut touched = 0;
    for mut job in store.unfinished_jobs()? {
        if recover_job(&mut job, now) {
            store.put_job(&job)?;
            touched += 1;
        }
        if job.is_finalized() {
            continue;
        }
        if job.status() == Status::Queued {
            state.runnable.insert((job.priority(), job.id));
        }
        state.jobs.insert(job.id, job);
    }
    state.finished_count = store.finished_count();
    state.next_id = store.next_id()?.max(store.max_stored_id()? + 1);
    store.set_next_id(state.next_id)?;
    store.durable().await?;
    if touched > 0 {
        tracing::info!(
            jobs = touched,
            "recovered jobs interrupted by the previous process"
        );
    }
    Ok(())
}

/// Applies the recovery table to one job; true if it changed.
fn recover_job(job: &mut Job, now: Timestamp) -> bool {
    if job.is_finalized() {
        return false;
    }
    let Some(idx) = job.current_op() else {
        return false;
    };
    let current = job.ops[idx].status;
    if current == Status::Queued && job.start_ts.is_none() {
        return false;
    }
    match current {
        Status::Queued | Status::Waiting => {
            for op in job.ops.iter_mut().skip(idx) {
                op.status = Status::Queued;
            }
        }
        Status::Canceling => {
            job.ops[idx].end = Some(now);
            job.finalize_rest(idx, Status::Canceled, json!(ERROR_MSG_CANCELED), now);
        }
        _ => {
            job.ops[idx].end = Some(now);
            let err = json!(["OpExecError", ["Unclean master daemon shutdown"]]);
            job.finalize_rest(idx, Status::Error, err, now);
        }
    }
    add_pickup_reasons(job, now);
    true
}

fn add_pickup_reasons(job: &mut Job, now: Timestamp) {
    let id: JobId = job.id;
    for (index, op) in job.ops.iter_mut().enumerate() {
        let name = op
            .input
            .id()
            .as_str()
            .trim_start_matches("OP_")
            .to_lowercase();
        op.input.append_reason(
            &format!("gnt:daemon:masterd:pickup:{name}"),
            &format!("job={id};index={index}"),
            now.as_nanos(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::opcodes::OpCode;

    fn job(statuses: &[Status]) -> Job {
        let op = OpCode::from_json(&json!({"OP_ID": "OP_TEST_DELAY", "duration": 1})).unwrap();
        let mut j = Job::new(JobId(7), vec![op; statuses.len()], Timestamp::now());
        for (o, s) in j.ops.iter_mut().zip(statuses) {
            o.status = *s;
        }
        j.start_ts = Some(Timestamp::now());
        j
    }

    #[test]
    fn running_jobs_become_unclean_shutdown_errors() {
        let mut j = job(&[Status::Success, Status::Running, Status::Queued]);
        assert!(recover_job(&mut j, Timestamp::now()));
        assert_eq!(j.status(), Status::Error);
        assert_eq!(j.ops[0].status, Status::Success);
        assert_eq!(
            j.ops[1].result,
            json!(["OpExecError", ["Unclean master daemon shutdown"]])
        );
        assert_eq!(j.ops[2].status, Status::Error);
        assert!(j.end_ts.is_some());
        let trail = j.ops[0].input.get("reason").unwrap().to_string();
        assert!(trail.contains("gnt:daemon:masterd:pickup:test_delay"));
    }

    #[test]
    fn waiting_jobs_are_requeued_and_canceling_ones_canceled() {
        let mut w = job(&[Status::Waiting, Status::Queued]);
        assert!(recover_job(&mut w, Timestamp::now()));
        assert_eq!(w.status(), Status::Queued);
        assert!(w.start_ts.is_some());
        let mut c = job(&[Status::Canceling]);
        assert!(recover_job(&mut c, Timestamp::now()));
        assert_eq!(c.status(), Status::Canceled);
    }
}
