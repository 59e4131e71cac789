//! A headless Chromium driven over WebDriver (Debian's `chromium` and `chromedriver`, through
//! the `fantoccini` client), for the web console's test and figures. The chromedriver process is
//! ours, started on a free loopback port and killed by its PID when the [`Browser`] drops.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

/// Debian's browser and its driver.
pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// A browser session with its own tokio runtime (the callers are synchronous).
pub struct Browser {
    runtime: tokio::runtime::Runtime,
    client: Option<fantoccini::Client>,
    driver: Child,
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            let _ =
                self.runtime.block_on(async { tokio::time::timeout(Duration::from_secs(10), client.close()).await });
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Browser {
    /// Starts chromedriver and a headless Chromium with a `width`×`height` window.
    ///
    /// # Errors
    /// When the binaries are missing, the driver does not listen within a minute, or the session
    /// cannot start.
    pub fn start(width: u32, height: u32) -> Result<Self> {
        for bin in [CHROMIUM, CHROMEDRIVER] {
            if !std::path::Path::new(bin).exists() {
                bail!("{bin} is missing (make deps installs chromium and chromium-driver)");
            }
        }
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting chromedriver")?;
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let mut browser = Self { runtime, client: None, driver };
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("chromedriver did not listen on port {port} within a minute");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({"binary": CHROMIUM, "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                   format!("--window-size={width},{height}")]}),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = browser
            .runtime
            .block_on(
                fantoccini::ClientBuilder::new(connector)
                    .capabilities(caps)
                    .connect(&format!("http://127.0.0.1:{port}")),
            )
            .context("starting a Chromium session")?;
        browser.client = Some(client);
        Ok(browser)
    }

    fn client(&self) -> &fantoccini::Client {
        self.client.as_ref().expect("a session while the browser lives")
    }

    /// Opens `url`.
    ///
    /// # Errors
    /// When the browser refuses.
    pub fn goto(&self, url: &str) -> Result<()> {
        self.runtime.block_on(self.client().goto(url)).with_context(|| format!("opening {url}"))
    }

    /// Runs `script` (a function body; `return` gives the value) in the page.
    ///
    /// # Errors
    /// When the script throws or the browser refuses.
    pub fn eval(&self, script: &str) -> Result<Value> {
        self.runtime.block_on(self.client().execute(script, Vec::new())).context("running a script in the page")
    }

    /// Evaluates `script` until `ok` holds for its value, or `timeout` passes (the last value is
    /// returned either way, with whether it held).
    ///
    /// # Errors
    /// When the script fails.
    pub fn wait_for(&self, script: &str, timeout: Duration, ok: impl Fn(&Value) -> bool) -> Result<(bool, Value)> {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.eval(script)?;
            if ok(&v) {
                return Ok((true, v));
            }
            if Instant::now() > deadline {
                return Ok((false, v));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Saves a PNG screenshot of the window to `path`.
    ///
    /// # Errors
    /// When the browser refuses or the file cannot be written.
    pub fn screenshot(&self, path: &std::path::Path) -> Result<()> {
        let png = self.runtime.block_on(self.client().screenshot()).context("taking a screenshot")?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, png).with_context(|| format!("writing {}", path.display()))
    }
}
