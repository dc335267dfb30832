//! Java clients built by the tests: OkHttp (Debian's libokhttp-java) is the
//! client of the HTTP Shortcuts app, so what it does is what a phone button
//! does. Each client is compiled once per test binary.

use std::collections::HashMap;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;

use super::pki::{have, need};

/// The jars of Debian's libokhttp-java (OkHttp 3.13 and okio).
pub const OKHTTP_JARS: &[&str] = &["/usr/share/java/okhttp.jar", "/usr/share/java/okio.jar"];

/// Compiles `source`, a class called `class` that uses OkHttp, once; returns
/// the classpath to run it with (`java -cp CLASSPATH CLASS …`), or `None`
/// (skipped) when javac, java or the jars are missing and this is not CI.
pub fn okhttp_class(class: &str, source: &str) -> Option<String> {
    static BUILT: Mutex<Option<HashMap<String, String>>> = Mutex::new(None);
    let jars_present = OKHTTP_JARS.iter().all(|j| Path::new(j).exists());
    if !need(&[
        ("javac", have("javac")),
        ("java", have("java")),
        ("libokhttp-java (okhttp.jar, okio.jar)", jars_present),
    ]) {
        return None;
    }
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    let built = built.get_or_insert_with(HashMap::new);
    if let Some(classpath) = built.get(class) {
        return Some(classpath.clone());
    }
    let dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("java-{class}-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let file = dir.join(format!("{class}.java"));
    fs::write(&file, source).unwrap();
    let jars = OKHTTP_JARS.join(":");
    let out = Command::new("javac")
        .args(["-cp", &jars, "-d"])
        .arg(&dir)
        .arg(&file)
        .output()
        .expect("javac runs");
    assert!(
        out.status.success(),
        "javac {class}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let classpath = format!("{}:{jars}", dir.display());
    built.insert(class.to_owned(), classpath.clone());
    Some(classpath)
}
