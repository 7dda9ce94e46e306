//! Browser tests: a headless Chromium (Debian's `chromium` + `chromium-driver`) driven over
//! WebDriver with fantoccini. `scripts/install-browser` installs both; without them the browser
//! tests skip with a note, unless `CONCIERGE_REQUIRE_BROWSER` is set (CI sets it), where a
//! missing browser is a failure.
//!
//! chromedriver listens on loopback over plain HTTP, so fantoccini is built without TLS and
//! talks to it through hyper's plain connector.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::elements::{Element, ShadowRoot};
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};

use crate::helpers::TestApp;

pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
pub const CHROMIUM: &str = "/usr/bin/chromium";
const REQUIRE_VAR: &str = "CONCIERGE_REQUIRE_BROWSER";

/// A headless Chromium driven over WebDriver; starts its own chromedriver on a free port and
/// kills it on drop. None (with an eprintln saying why) when /usr/bin/chromedriver is absent AND
/// the env var CONCIERGE_REQUIRE_BROWSER is not set; when that var is set (CI sets it), absence
/// is a panic with a message naming the missing binary and the install script.
pub struct Browser {
    pub client: Client,
    /// Declared before `profile`: chromedriver and Chromium end before their folder goes.
    _driver: Driver,
    /// Holds the Chromium profile (`--user-data-dir`) and chromedriver's log.
    profile: tempfile::TempDir,
}

/// The chromedriver child, in its own process group; dropping it kills the group (chromedriver
/// and the Chromium it started), also when a test panics half-way through `start`.
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.0.id())])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Browser {
    pub async fn start() -> Option<Browser> {
        for bin in [CHROMEDRIVER, CHROMIUM] {
            if !Path::new(bin).exists() {
                let why = format!(
                    "{bin} is missing: install Debian's chromium and chromium-driver with \
                     scripts/install-browser"
                );
                if std::env::var_os(REQUIRE_VAR).is_some() {
                    panic!("{why} ({REQUIRE_VAR} is set, so browser tests may not be skipped)");
                }
                eprintln!(
                    "skipping browser test: {why} (set {REQUIRE_VAR} to make this a failure)"
                );
                return None;
            }
        }

        let profile = tempfile::Builder::new()
            .prefix("concierge-chromium-")
            .tempdir()
            .expect("temp dir for the Chromium profile");
        let log = profile.path().join("chromedriver.log");
        let port = free_port();
        let mut cmd = Command::new(CHROMEDRIVER);
        cmd.arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // Its own process group, so that dropping the Browser also ends the Chromium processes
        // chromedriver started, even when a test panics before `close`.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut driver = Driver(
            cmd.spawn()
                .unwrap_or_else(|e| panic!("cannot start {CHROMEDRIVER}: {e}")),
        );

        // Wait until chromedriver listens.
        let up = wait_for(Duration::from_secs(15), || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()
                .map(|_| ())
        })
        .await;
        if up.is_none() {
            let status = driver.0.try_wait().ok().flatten();
            panic!(
                "chromedriver did not listen on port {port} within 15 s (exit status: {status:?}); \
                 log: {}",
                read_log(&log)
            );
        }

        let user_data_dir = profile.path().join("profile");
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--window-size=1280,900",
                    format!("--user-data-dir={}", user_data_dir.display()),
                ],
            },
        });
        let Value::Object(caps) = caps else {
            unreachable!()
        };
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await;
        match client {
            Ok(client) => Some(Browser {
                client,
                _driver: driver,
                profile,
            }),
            Err(e) => panic!(
                "chromedriver could not start {CHROMIUM}: {e}; chromedriver log: {}",
                read_log(&log)
            ),
        }
    }

    /// Saves a PNG of the current viewport at `path` (creating its folder) and returns the path.
    pub async fn screenshot(&self, path: &Path) -> PathBuf {
        let png = self
            .client
            .screenshot()
            .await
            .expect("WebDriver screenshot");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        }
        std::fs::write(path, png).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path.to_path_buf()
    }

    /// Ends the WebDriver session (Chromium quits), then chromedriver.
    pub async fn close(self) {
        let _ = tokio::time::timeout(Duration::from_secs(10), self.client.clone().close()).await;
        // Dropping `self` then kills chromedriver and whatever is left of its process group.
    }

    /// chromedriver's log so far, for failure messages.
    pub fn driver_log(&self) -> String {
        read_log(&self.profile.path().join("chromedriver.log"))
    }
}

fn read_log(path: &Path) -> String {
    match std::fs::read_to_string(path) {
        Ok(s) => {
            let tail: Vec<&str> = s.lines().rev().take(40).collect();
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        }
        Err(e) => format!("(no log at {}: {e})", path.display()),
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free local port")
}

/// Polls `f` every 100 ms until it returns Some, or until `timeout` has passed (then None). `f`
/// runs at least once.
pub async fn wait_for<F, Fut, T>(timeout: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Where screenshots go: `<target dir>/screenshots/`, or the temp dir when the test binary does
/// not sit in a Cargo target dir.
pub fn screenshot_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(dir).join("screenshots");
    }
    // The test binary is <target>/<profile>/deps/it-<hash>.
    std::env::current_exe()
        .ok()
        .and_then(|exe| {
            let deps = exe.parent()?;
            (deps.file_name()? == "deps").then(|| deps.parent()?.parent().map(Path::to_path_buf))?
        })
        .unwrap_or_else(std::env::temp_dir)
        .join("screenshots")
}

/// The chat widget's shadow root, once the (async) widget script has built it.
async fn widget_root(c: &Client, timeout: Duration) -> Option<(Element, ShadowRoot)> {
    wait_for(timeout, || async {
        let host = c.find(Locator::Css("#concierge-chat")).await.ok()?;
        let root = host.shadow_root().await.ok()?;
        root.find(Locator::Css("[data-testid=concierge-launcher]"))
            .await
            .ok()?;
        Some((host, root))
    })
    .await
}

/// What the widget shows, for failure messages: its state and every message element.
async fn widget_dump(c: &Client) -> String {
    let js = r#"
        const h = document.getElementById('concierge-chat');
        if (!h) return 'no #concierge-chat on the page';
        const msgs = h.shadowRoot ? [...h.shadowRoot.querySelectorAll('li')].map(li =>
            `  [${li.dataset.author || li.className} id=${li.dataset.id || '-'} ${li.dataset.status || ''}] ${li.textContent}`) : [];
        return `data-state=${h.dataset.state} data-last-agent-message=${JSON.stringify(h.dataset.lastAgentMessage)}\n${msgs.join('\n')}`;
    "#;
    match c.execute(js, vec![]).await {
        Ok(Value::String(s)) => s,
        other => format!("(could not read the widget: {other:?})"),
    }
}

#[tokio::test]
async fn widget_answers_on_the_demo_page() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let app = TestApp::spawn().await;
    app.import_tau().await;
    let c = &browser.client;

    c.goto(&app.url("/chat")).await.expect("open /chat");
    let (host, root) = match widget_root(c, Duration::from_secs(10)).await {
        Some(found) => found,
        None => panic!(
            "the chat widget did not appear on {} within 10 s\n{}",
            app.url("/chat"),
            widget_dump(c).await
        ),
    };

    root.find(Locator::Css("[data-testid=concierge-launcher]"))
        .await
        .expect("launcher")
        .click()
        .await
        .expect("click the launcher");
    let question = "Hi, how many days do I have to return something?";
    root.find(Locator::Css("[data-testid=concierge-input]"))
        .await
        .expect("input")
        .send_keys(question)
        .await
        .expect("type the question");
    root.find(Locator::Css("[data-testid=concierge-send]"))
        .await
        .expect("send button")
        .click()
        .await
        .expect("click send");

    let answer = wait_for(Duration::from_secs(20), || async {
        let last = host.attr("data-last-agent-message").await.ok()??;
        last.contains("30 days").then_some(last)
    })
    .await;
    let shot = browser
        .screenshot(&screenshot_dir().join("webchat.png"))
        .await;
    println!("screenshot: {}", shot.display());
    let Some(answer) = answer else {
        panic!(
            "no agent reply containing \"30 days\" within 20 s (screenshot: {})\n{}\n\
             chromedriver log:\n{}",
            shot.display(),
            widget_dump(c).await,
            browser.driver_log()
        );
    };
    println!("agent replied: {answer}");

    // The question shows once, delivered (acked) and never duplicated.
    let mine = root
        .find_all(Locator::Css(
            "[data-testid=concierge-message][data-author=customer]",
        ))
        .await
        .expect("customer messages");
    assert_eq!(
        mine.len(),
        1,
        "the question should show exactly once\n{}",
        widget_dump(c).await
    );
    let delivered = wait_for(Duration::from_secs(5), || async {
        let id = mine[0].attr("data-id").await.ok()??;
        (!id.is_empty()).then_some(id)
    })
    .await;
    assert!(
        delivered.is_some(),
        "the question was never acked (no data-id)\n{}",
        widget_dump(c).await
    );

    browser.close().await;
    app.stop().await;
}
