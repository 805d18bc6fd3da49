//! The fleet's workers as child processes (`flux-bench worker` with a [`FleetWorkerSpec`]), as
//! deployed: one `flux_cluster::Worker` over its own engine each.

use super::*;

/// A fleet worker child process (`flux-bench worker` with a [`FleetWorkerSpec`]). Closing its
/// stdin stops it; dropped while running, it is killed.
#[derive(Debug)]
pub(super) struct WorkerProcess {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    ready: Option<std::sync::mpsc::Receiver<()>>,
}

impl WorkerProcess {
    pub(super) fn spawn(spec: &FleetWorkerSpec) -> Result<WorkerProcess> {
        let exe = std::env::current_exe().context("locating the flux-bench executable")?;
        let spec_json = serde_json::to_string(&WorkerSpec::FleetWorker(spec.clone()))?;
        let mut child = Command::new(exe)
            .args(["worker", &spec_json])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting a fleet worker process")?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let (ready_tx, ready) = std::sync::mpsc::channel();
        if let Some(stdout) = stdout {
            // Reads to the end, so the child never blocks on a full pipe.
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if line.trim() == READY_LINE {
                        let _ = ready_tx.send(());
                    }
                }
            });
        }
        Ok(WorkerProcess {
            name: spec.name.clone(),
            child,
            stdin,
            ready: Some(ready),
        })
    }

    /// Waits until the child says it takes jobs.
    pub(super) async fn wait_ready(&mut self, within: Duration) -> Result<()> {
        let Some(ready) = self.ready.take() else {
            return Ok(());
        };
        let heard = tokio::task::spawn_blocking(move || ready.recv_timeout(within))
            .await
            .context("waiting for a fleet worker")?;
        if heard.is_ok() {
            return Ok(());
        }
        match self.child.try_wait() {
            Ok(Some(status)) => bail!("fleet worker {} exited ({status})", self.name),
            _ => bail!(
                "fleet worker {} did not take jobs within {within:?}",
                self.name
            ),
        }
    }

    /// Closes its stdin and waits (up to 30 s) for it to finish its job and exit.
    pub(super) async fn stop(mut self) -> Result<()> {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) if status.success() => return Ok(()),
                Ok(Some(status)) => bail!("fleet worker {} failed ({status})", self.name),
                Ok(None) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Ok(None) => bail!("fleet worker {} did not stop within 30 s", self.name),
                Err(error) => {
                    return Err(anyhow::Error::new(error)
                        .context(format!("waiting for fleet worker {}", self.name)));
                }
            }
        }
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs one fleet worker in this process (the child side) until its stdin closes.
pub fn run_worker(spec: &FleetWorkerSpec) -> Result<FleetWorkerDone> {
    let runtime = client_runtime()?;
    let done = runtime.block_on(worker_async(spec));
    runtime.shutdown_background();
    done
}

async fn worker_async(spec: &FleetWorkerSpec) -> Result<FleetWorkerDone> {
    let generator: Arc<dyn Generator> = match spec.engine {
        // One job at a time, as `flux worker` runs its engine.
        FleetEngine::Tiny => start_tiny(&spec.model_dir, 1).await?,
        FleetEngine::Instant => Arc::new(InstantGenerator::new()?),
    };
    let client = async_nats::connect(spec.nats_url.as_str())
        .await
        .with_context(|| format!("connecting to {}", spec.nats_url))?;
    let fleet = Fleet::open(client, fleet_settings(spec.queue_depth)).await?;
    let images = Arc::new(FolderImages::new(&spec.images_dir)?);
    let config = WorkerConfig {
        name: spec.name.clone(),
        job_timeout: Duration::from_secs(600),
        stats: Default::default(),
        stage_hook: None,
    };
    let stats = config.stats.clone();
    let worker = Worker::new(fleet, Arc::clone(&generator), images, config);
    let announced = stats.clone();
    tokio::spawn(async move {
        while !announced.is_taking_jobs() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "{READY_LINE}");
        let _ = stdout.flush();
    });
    let stdin_closed = async {
        let _ = tokio::task::spawn_blocking(|| {
            let mut sink = Vec::new();
            std::io::stdin().read_to_end(&mut sink)
        })
        .await;
    };
    worker.run(stdin_closed).await?;
    // Its engine thread is joined off the async threads.
    tokio::task::spawn_blocking(move || drop(generator))
        .await
        .context("stopping the engine")?;
    Ok(FleetWorkerDone {
        name: spec.name.clone(),
        attempts: stats.attempts(),
    })
}
