//! A small W3C WebDriver client over reqwest, enough to drive headless Chromium through Debian's
//! `chromedriver`: sessions, navigation, elements, clicks, keys, scripts and screenshots.
//!
//! Chromium and chromedriver come from Debian (`apt-get install chromium chromium-driver`, which
//! `.ci/run` does when they are missing); `FLUX_RS_CHROMIUM` and `FLUX_RS_CHROMEDRIVER` point
//! elsewhere. A missing browser fails the test with that advice: it never skips.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine as _;
use serde_json::{Value, json};

/// The key under which WebDriver returns an element reference.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

fn tool(variable: &str, default: &str) -> anyhow::Result<String> {
    let path = std::env::var(variable).unwrap_or_else(|_| default.to_owned());
    if !Path::new(&path).exists() {
        bail!(
            "{path} is missing: the playground's browser test needs Debian's chromium and \
             chromium-driver (`apt-get install -y chromium chromium-driver`; .ci/run installs \
             them), or {variable} set to another binary"
        );
    }
    Ok(path)
}

/// A running chromedriver on a free loopback port; killed on drop.
pub(crate) struct Driver {
    child: Child,
    base: String,
    http: reqwest::Client,
}

impl Driver {
    pub(crate) async fn start() -> anyhow::Result<Self> {
        let chromedriver = tool("FLUX_RS_CHROMEDRIVER", "/usr/bin/chromedriver")?;
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let child = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("cannot start {chromedriver}"))?;
        let driver = Driver {
            child,
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
        };
        // chromedriver answers /status once it listens; until then connections are refused.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = driver
                .http
                .get(format!("{}/status", driver.base))
                .send()
                .await;
            if let Ok(response) = ready
                && let Ok(body) = response.json::<Value>().await
                && body["value"]["ready"] == true
            {
                return Ok(driver);
            }
            if Instant::now() > deadline {
                bail!("chromedriver did not answer /status within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A new headless browser with a viewport of `width` × `height` CSS pixels at scale 1.
    pub(crate) async fn session(&self, width: u32, height: u32) -> anyhow::Result<Session> {
        let chromium = tool("FLUX_RS_CHROMIUM", "/usr/bin/chromium")?;
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless=new",
                    // CI runs as root, where Chromium's sandbox cannot start.
                    "--no-sandbox",
                    "--disable-dev-shm-usage",
                    "--disable-gpu",
                    "--hide-scrollbars",
                    "--force-device-scale-factor=1",
                    "--no-first-run",
                    "--lang=en-US",
                ],
            },
        }}});
        let answer = command(
            &self.http,
            reqwest::Method::POST,
            &format!("{}/session", self.base),
            Some(capabilities),
        )
        .await?;
        let id = answer["sessionId"]
            .as_str()
            .context("no sessionId in the new session's answer")?;
        let session = Session {
            http: self.http.clone(),
            url: format!("{}/session/{id}", self.base),
        };
        session.viewport(width, height).await?;
        Ok(session)
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One WebDriver call; the `value` of its answer, or the driver's error as an error.
async fn command(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    let request = http.request(method.clone(), url);
    let request = match body {
        Some(body) => request.json(&body),
        None => request,
    };
    let response = request
        .send()
        .await
        .with_context(|| format!("{method} {url}"))?;
    let status = response.status();
    let mut answer: Value = response.json().await?;
    if !status.is_success() {
        bail!(
            "WebDriver {method} {url}: {status} {}: {}",
            answer["value"]["error"],
            answer["value"]["message"]
        );
    }
    let value = answer["value"].take();
    // A new session's answer carries its id inside `value`.
    Ok(value)
}

/// A browser session; closed (its browser ended) by [`Session::close`].
pub(crate) struct Session {
    http: reqwest::Client,
    url: String,
}

/// An element reference.
#[derive(Clone)]
pub(crate) struct Element(String);

impl Session {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        command(&self.http, method, &format!("{}{path}", self.url), body).await
    }

    /// Sets the viewport (not the window) to `width` × `height`, as a phone or a desktop has it.
    pub(crate) async fn viewport(&self, width: u32, height: u32) -> anyhow::Result<()> {
        self.call(
            reqwest::Method::POST,
            "/goog/cdp/execute",
            Some(
                json!({"cmd": "Emulation.setDeviceMetricsOverride", "params": {
                    "width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600,
                }}),
            ),
        )
        .await?;
        Ok(())
    }

    pub(crate) async fn goto(&self, url: &str) -> anyhow::Result<()> {
        self.call(reqwest::Method::POST, "/url", Some(json!({"url": url})))
            .await?;
        Ok(())
    }

    pub(crate) async fn find(&self, css: &str) -> anyhow::Result<Element> {
        let value = self
            .call(
                reqwest::Method::POST,
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await
            .with_context(|| format!("no element {css:?}"))?;
        let id = value[ELEMENT_KEY]
            .as_str()
            .with_context(|| format!("no element reference for {css:?}"))?;
        Ok(Element(id.to_owned()))
    }

    pub(crate) async fn click(&self, css: &str) -> anyhow::Result<()> {
        let element = self.find(css).await?;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{}/click", element.0),
            Some(json!({})),
        )
        .await
        .with_context(|| format!("clicking {css:?}"))?;
        Ok(())
    }

    /// Clears a text field and types `text` into it, key by key.
    pub(crate) async fn fill(&self, css: &str, text: &str) -> anyhow::Result<()> {
        let element = self.find(css).await?;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{}/clear", element.0),
            Some(json!({})),
        )
        .await?;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{}/value", element.0),
            Some(json!({"text": text})),
        )
        .await
        .with_context(|| format!("typing into {css:?}"))?;
        Ok(())
    }

    /// Chooses the option with `value` in a `<select>`, by clicking it as a person would.
    pub(crate) async fn choose(&self, select_css: &str, value: &str) -> anyhow::Result<()> {
        self.click(&format!("{select_css} option[value=\"{value}\"]"))
            .await
    }

    /// Runs `body` (a function body; `arguments` are `args`) in the page; its return value.
    pub(crate) async fn script(&self, body: &str, args: Value) -> anyhow::Result<Value> {
        self.call(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({"script": body, "args": args})),
        )
        .await
    }

    /// Waits until `expression` (JavaScript) is truthy in the page; `what` names it in the error.
    /// The deadline is generous: it only bounds a test that would otherwise hang.
    pub(crate) async fn wait_for(
        &self,
        what: &str,
        expression: &str,
        within: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        let body = format!("return !!({expression});");
        loop {
            if self.script(&body, json!([])).await? == Value::Bool(true) {
                return Ok(());
            }
            if Instant::now() > deadline {
                let text = self
                    .script("return document.body.innerText;", json!([]))
                    .await
                    .unwrap_or_default();
                bail!("waited {within:?} for {what}; the page reads:\n{text}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A PNG of the viewport.
    pub(crate) async fn screenshot(&self) -> anyhow::Result<Vec<u8>> {
        let value = self.call(reqwest::Method::GET, "/screenshot", None).await?;
        let text = value.as_str().context("the screenshot is not a string")?;
        Ok(base64::engine::general_purpose::STANDARD.decode(text)?)
    }

    pub(crate) async fn close(self) -> anyhow::Result<()> {
        self.call(reqwest::Method::DELETE, "", None).await?;
        Ok(())
    }
}
