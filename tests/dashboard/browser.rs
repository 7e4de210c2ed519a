//! The dashboard page as the server sends it and as a real headless Chromium renders it
//! (tests/dashboard.rs, tests/dashboard_charts.rs).
//!
//! Chromium: `chromium` on the PATH, or the program `OCS_CHROMIUM` names. Without it the
//! browser tests print `SKIPPED: chromium not found` and pass, unless `CI=true`, where they
//! fail.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Safety bound for Chromium to finish; tests never assert on elapsed time.
const WAIT: Duration = Duration::from_secs(60);

/// GET `url`, which must answer 200 with `content_type`: its body.
pub async fn get_body(url: &str, content_type: &str) -> String {
    let response = reqwest::get(url)
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    assert_eq!(response.status().as_u16(), 200, "GET {url}");
    let answered = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert_eq!(answered, content_type, "GET {url}");
    response.text().await.expect("body")
}

/// GET `url` as text/html: its body.
pub async fn get_html(url: &str) -> String {
    get_body(url, "text/html; charset=utf-8").await
}

/// GET `url` as JSON.
pub async fn get_json(url: &str) -> serde_json::Value {
    let body = get_body(url, "application/json").await;
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// Chromium: `OCS_CHROMIUM`, else `chromium` or `chromium-browser` on the PATH.
fn find_chromium() -> Option<PathBuf> {
    if let Some(program) = std::env::var_os("OCS_CHROMIUM").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(program));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| ["chromium", "chromium-browser"].map(|name| dir.join(name)))
        .find(|candidate| candidate.is_file())
}

/// Runs headless Chromium with `args` and the page `url`; returns its stdout. It ends by
/// itself (`--virtual-time-budget`, `--screenshot`); [`WAIT`] bounds it anyway.
pub async fn run_chromium(chromium: PathBuf, args: Vec<String>, url: String) -> String {
    tokio::task::spawn_blocking(move || {
        let profile = tempfile::tempdir().expect("profile directory");
        let mut child = Command::new(&chromium)
            .args([
                "--headless=new",
                "--disable-gpu",
                "--no-sandbox",
                "--no-first-run",
                "--disable-dev-shm-usage",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(&args)
            .arg(&url)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", chromium.display()));
        let mut stdout = child.stdout.take().expect("stdout");
        let mut stderr = child.stderr.take().expect("stderr");
        let out = std::thread::spawn(move || {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut stdout, &mut text).map(|_| text)
        });
        let err = std::thread::spawn(move || {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut stderr, &mut text).map(|_| text)
        });
        let deadline = std::time::Instant::now() + WAIT;
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for chromium") {
                break status;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("chromium did not finish within {WAIT:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let stdout = out.join().expect("stdout reader").expect("read stdout");
        let stderr = err.join().expect("stderr reader").unwrap_or_default();
        assert!(status.success(), "chromium failed ({status}): {stderr}");
        stdout
    })
    .await
    .expect("chromium task")
}

/// The text of the element whose start tag contains `marker` (up to the next tag).
pub fn text_after(dom: &str, marker: &str) -> String {
    let start = dom
        .find(marker)
        .unwrap_or_else(|| panic!("{marker:?} not in the rendered page:\n{dom}"));
    let rest = &dom[start..];
    let open_end = rest.find('>').expect("end of the start tag") + 1;
    let text = &rest[open_end..];
    text[..text.find('<').unwrap_or(text.len())].to_owned()
}

/// Chromium, or `None` after printing `SKIPPED` (a failure with `CI=true`).
pub fn chromium_or_skip() -> Option<PathBuf> {
    let found = find_chromium();
    if found.is_none() {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!(
                "CI=true but chromium was not found (apt-get install -y chromium, or set OCS_CHROMIUM)"
            );
        }
        // Written to the process's stderr directly: libtest captures `eprintln!` of passing
        // tests, and a skip must be visible in the run's output.
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: chromium not found (install it, or set OCS_CHROMIUM)"
        );
    }
    found
}
