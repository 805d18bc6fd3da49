//! Compare-and-set writes of job records on a real nats-server: a write from a known revision
//! lands in one round trip when nobody wrote since, and is computed again from the current record
//! when somebody did (neither change is lost).

use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};
use flux_cluster::servers::NatsServer;
use flux_cluster::{Changed, Fleet, FleetRecord, FleetSettings, JOBS_BUCKET, Records};
use flux_service::{JobId, JobRecord, JobState, Owner};
use flux_types::{LogLine, VariantSpec, parse_request_for};

fn record() -> Result<FleetRecord> {
    let job = JobRecord {
        id: JobId::parse("0123456789abcdef0123456789abcdef").context("an id")?,
        owner: Owner([3; 32]),
        model: "dev".to_owned(),
        request: parse_request_for(
            br#"{"prompt": "a kept note", "seed": 1}"#,
            VariantSpec::dev(),
        )?,
        state: JobState::Queued,
        logs: Vec::new(),
        webhook: None,
        webhook_owed: false,
        submitted_at: SystemTime::now(),
        completed_at: None,
        keep_record: true,
    };
    Ok(FleetRecord::new(job, None))
}

fn line(text: &str) -> LogLine {
    LogLine {
        message: text.to_owned(),
        timestamp: "2026-12-02T00:00:00.000Z".to_owned(),
    }
}

fn written(changed: Changed) -> Result<(FleetRecord, u64)> {
    match changed {
        Changed::Written(record, revision) => Ok((record, revision)),
        other => bail!("not written: {other:?}"),
    }
}

fn messages(record: &FleetRecord) -> Vec<&str> {
    record
        .job
        .logs
        .iter()
        .map(|line| line.message.as_str())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_from_a_stale_revision_is_made_again_on_the_current_record() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let nats = NatsServer::start(dir.path())?;
    let client = async_nats::connect(nats.url()).await?;
    let settings = FleetSettings {
        retention: Duration::from_secs(600),
        ..FleetSettings::default()
    };
    Fleet::open(client.clone(), settings).await?;
    let records = Records::new(
        async_nats::jetstream::new(client)
            .get_key_value(JOBS_BUCKET)
            .await?,
    );
    let original = record()?;
    let id = original.job.id.to_string();
    let created = records.create(&original).await?.context("not created")?;

    // Nobody wrote since: the write lands on the known revision.
    let known = (original, created);
    let (first, revision) = written(
        records
            .update_from(&id, Some(known), |record| {
                record.job.logs.push(line("one"));
                true
            })
            .await?,
    )?;
    assert!(revision > created);

    // Somebody else writes; a write from the now stale copy must not undo theirs.
    written(
        records
            .update(&id, |record| {
                record.job.logs.push(line("theirs"));
                true
            })
            .await?,
    )?;
    let (after, _) = written(
        records
            .update_from(&id, Some((first.clone(), revision)), |record| {
                record.job.logs.push(line("two"));
                true
            })
            .await?,
    )?;
    assert_eq!(messages(&after), ["one", "theirs", "two"]);
    let (stored, _) = records.get(&id).await?.context("gone")?;
    assert_eq!(messages(&stored), ["one", "theirs", "two"]);

    // A change declined on the stale copy is decided again on the current record.
    let mut seen = Vec::new();
    let declined = records
        .update_from(&id, Some((first, revision)), |record| {
            seen.push(record.job.logs.len());
            false
        })
        .await?;
    assert!(matches!(declined, Changed::Unchanged(..)), "{declined:?}");
    assert_eq!(seen, [1, 3], "looked at the old copy, then the current one");
    Ok(())
}

#[test]
fn a_time_limit_round_trips_and_an_older_record_without_one_reads_as_none() -> Result<()> {
    let mut limited = record()?;
    limited.time_limit = Some(Duration::from_millis(1500));
    let bytes = limited.encode()?;
    assert_eq!(
        FleetRecord::decode(&bytes)?.time_limit,
        Some(Duration::from_millis(1500))
    );
    // A record written before the field existed.
    let mut wire: serde_json::Value = serde_json::from_slice(&bytes)?;
    wire.as_object_mut()
        .context("a record is an object")?
        .remove("time_limit_ms")
        .context("the field is written")?;
    let older = FleetRecord::decode(&serde_json::to_vec(&wire)?)?;
    assert_eq!(older.time_limit, None);
    assert_eq!(older.job.id, limited.job.id);
    Ok(())
}
