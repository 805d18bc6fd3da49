//! Fault injection for `flux worker` (the fleet's failure tests): `FLUX_WORKER_FAULT` names the
//! points of an attempt at which the worker sends itself SIGKILL, so that a test can kill a real
//! worker process exactly between two writes (after its upload, before its record; after its
//! record, before its ack) or make a job that kills every worker taking it (a poison job, as a
//! generation the kernel's out-of-memory killer ends would be).
//!
//! The value is a comma-separated list of `STAGE` or `STAGE:TEXT` (the fault fires only for jobs
//! whose prompt contains TEXT), STAGE one of `started`, `uploaded`, `recorded`: e.g.
//! `FLUX_WORKER_FAULT=uploaded` or `FLUX_WORKER_FAULT=started:poison`. Unset in service.

use std::sync::Arc;

use flux_cluster::{FleetRecord, Stage, StageHook};

/// The environment variable read by [`from_env`].
pub const VARIABLE: &str = "FLUX_WORKER_FAULT";

/// One point of an attempt where the worker kills itself, for prompts containing `prompt`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fault {
    stage: Stage,
    prompt: Option<String>,
}

impl Fault {
    fn fires(&self, stage: Stage, record: &FleetRecord) -> bool {
        self.stage == stage
            && self
                .prompt
                .as_deref()
                .is_none_or(|text| record.job.request.prompt().contains(text))
    }
}

fn parse(value: &str) -> Result<Vec<Fault>, crate::BadInput> {
    value
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(|item| {
            let (stage, prompt) = match item.split_once(':') {
                Some((stage, prompt)) => (stage, Some(prompt.to_owned())),
                None => (item, None),
            };
            let stage = match stage {
                "started" => Stage::Started,
                "uploaded" => Stage::Uploaded,
                "recorded" => Stage::Recorded,
                other => {
                    return Err(crate::BadInput(format!(
                        "{VARIABLE}: {other:?} is not a stage (expected started, uploaded or recorded, \
                         optionally followed by :TEXT)"
                    )));
                }
            };
            Ok(Fault { stage, prompt })
        })
        .collect()
}

/// The hook `FLUX_WORKER_FAULT` asks for, or `None` when it is unset or empty.
pub fn from_env() -> Result<Option<StageHook>, crate::BadInput> {
    let Ok(value) = std::env::var(VARIABLE) else {
        return Ok(None);
    };
    let faults = parse(&value)?;
    if faults.is_empty() {
        return Ok(None);
    }
    tracing::warn!(faults = %value, "fault injection is on: this worker kills itself at these points");
    let faults = Arc::new(faults);
    Ok(Some(Arc::new(move |stage, record| {
        if faults.iter().any(|fault| fault.fires(stage, record)) {
            tracing::warn!(?stage, job = %record.job.id, "fault injection: killing this worker");
            // SIGKILL, not an exit: nothing of the attempt after this point runs, as when the
            // machine dies.
            if let Err(error) = flux_cluster::servers::signal(std::process::id(), "KILL") {
                tracing::error!(%error, "fault injection could not kill this worker; aborting");
                std::process::abort();
            }
            // The signal is delivered before `kill` returns; never go on if it was not.
            std::process::abort();
        }
        Box::pin(async {})
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_and_prompt_conditions_parse() -> Result<(), crate::BadInput> {
        assert_eq!(
            parse("uploaded, started:poison,")?,
            vec![
                Fault {
                    stage: Stage::Uploaded,
                    prompt: None
                },
                Fault {
                    stage: Stage::Started,
                    prompt: Some("poison".to_owned())
                },
            ]
        );
        assert!(parse("")?.is_empty());
        Ok(())
    }

    #[test]
    fn an_unknown_stage_is_refused_by_name() {
        let error = parse("acked").err().map(|error| error.0);
        assert!(
            error
                .as_deref()
                .is_some_and(|text| text.contains("\"acked\"")),
            "{error:?}"
        );
    }
}
