//! The one file watcher: config files, certificate files, deny lists and key files are
//! polled (a stat, off the request path) with the same rule. A change is a difference in
//! modification time or length that then holds still for one more poll, so a file rewritten
//! in several writes (an editor, `>` in a shell) is read once, whole; replacing a file by a
//! rename is atomic anyway. The stamp is taken before the caller reads the file, so a write
//! that lands during the read is seen at the next poll.

use std::path::Path;
use std::time::{Duration, SystemTime};

/// What a file looks like from outside: modification time and length; `None` when it
/// cannot be read.
pub type Stamp = Option<(Option<SystemTime>, u64)>;

/// The stamp of one file now.
pub async fn stamp(path: &Path) -> Stamp {
    let m = tokio::fs::metadata(path).await.ok()?;
    Some((m.modified().ok(), m.len()))
}

/// A set of files as last seen.
#[derive(Debug, Default)]
pub struct Watched {
    last: Vec<Stamp>,
}

impl Watched {
    /// The files as they are now: the next change is counted from here.
    pub async fn now<P: AsRef<Path>>(paths: &[P]) -> Watched {
        Watched {
            last: stamps(paths).await,
        }
    }

    /// Takes the files as they are now as seen (after a reload that another cause started).
    pub async fn rebase<P: AsRef<Path>>(&mut self, paths: &[P]) {
        self.last = stamps(paths).await;
    }

    /// Polls every `every` and returns `true` once the files differ from what was last seen
    /// and have then held still for one more poll; that becomes what was last seen. Returns
    /// `false` as soon as `alive()` is false at a poll (the watcher's owner is gone).
    ///
    /// Cancel-safe: dropped before it returns, it leaves what was last seen unchanged.
    pub async fn changed<P: AsRef<Path>>(
        &mut self,
        paths: &[P],
        every: Duration,
        alive: impl Fn() -> bool,
    ) -> bool {
        loop {
            tokio::time::sleep(every).await;
            if !alive() {
                return false;
            }
            let mut now = stamps(paths).await;
            if now == self.last {
                continue;
            }
            loop {
                tokio::time::sleep(every).await;
                if !alive() {
                    return false;
                }
                let again = stamps(paths).await;
                if again == now {
                    break;
                }
                now = again;
            }
            self.last = now;
            return true;
        }
    }
}

async fn stamps<P: AsRef<Path>>(paths: &[P]) -> Vec<Stamp> {
    let mut out = Vec::with_capacity(paths.len());
    for p in paths {
        out.push(stamp(p.as_ref()).await);
    }
    out
}

#[cfg(test)]
#[allow(clippy::disallowed_methods, reason = "tests set up files")]
mod tests {
    use super::*;

    /// A write is a change once it holds still; a file written again before the next poll
    /// is one change, seen whole; a file that does not change is never reported.
    #[tokio::test]
    async fn a_change_is_reported_once_it_holds_still() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, "one").unwrap();
        let paths = [path.clone()];
        let mut w = Watched::now(&paths).await;
        let every = Duration::from_millis(20);
        let quiet = tokio::time::timeout(
            Duration::from_millis(150),
            w.changed(&paths, every, || true),
        );
        assert!(quiet.await.is_err(), "an unchanged file is no change");
        std::fs::write(&path, "two, longer").unwrap();
        assert!(w.changed(&paths, every, || true).await);
        assert_eq!(w.last, vec![stamp(&path).await]);
        assert!(!w.changed(&paths, every, || false).await, "owner gone");
    }
}
