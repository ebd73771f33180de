//! What a plugin logs during one call: the `log` import's lines and its stdout/stderr,
//! kept in one buffer bounded by [`super::Limits::log_bytes`].
//!
//! # Guarantees
//! - Lines past the bound are counted in [`Log::dropped`], never kept; a plugin that logs
//!   too much loses its excess output, not its reconcile.
//! - stdout and stderr are captured through [`CappedPipe`]s with the same bound and become
//!   lines (`stream=stdout` at INFO, `stream=stderr` at WARN) when the call ends.

use super::pipe::CappedPipe;

/// One line a plugin logged (through the `log` import, or stdout/stderr).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// Severity.
    pub level: tracing::Level,
    /// Text.
    pub message: String,
    /// Key/value fields.
    pub fields: Vec<(String, String)>,
}

impl LogLine {
    /// Sends the line to `tracing` at its level, attributed to `plugin`.
    pub fn emit(&self, plugin: &str) {
        let fields = self
            .fields
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ");
        let msg = &self.message;
        match self.level {
            tracing::Level::ERROR => {
                tracing::error!(target: "rekon::plugin", plugin, %fields, "{msg}")
            }
            tracing::Level::WARN => {
                tracing::warn!(target: "rekon::plugin", plugin, %fields, "{msg}")
            }
            tracing::Level::INFO => {
                tracing::info!(target: "rekon::plugin", plugin, %fields, "{msg}")
            }
            tracing::Level::DEBUG => {
                tracing::debug!(target: "rekon::plugin", plugin, %fields, "{msg}")
            }
            tracing::Level::TRACE => {
                tracing::trace!(target: "rekon::plugin", plugin, %fields, "{msg}")
            }
        }
    }

    fn size(&self) -> usize {
        self.message.len()
            + self
                .fields
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
    }
}

/// The log capture of one call: the bounded line buffer and the stdio pipes.
pub(super) struct Log {
    lines: Vec<LogLine>,
    bytes: usize,
    cap: usize,
    dropped: u64,
    stdout: CappedPipe,
    stderr: CappedPipe,
}

impl Log {
    /// An empty capture keeping at most `cap` bytes of lines, and as much of each of
    /// stdout and stderr.
    pub(super) fn new(cap: usize) -> Self {
        Self {
            lines: Vec::new(),
            bytes: 0,
            cap,
            dropped: 0,
            stdout: CappedPipe::new(cap),
            stderr: CappedPipe::new(cap),
        }
    }

    /// The pipe WASI's stdout writes to.
    pub(super) fn stdout(&self) -> CappedPipe {
        self.stdout.clone()
    }

    /// The pipe WASI's stderr writes to.
    pub(super) fn stderr(&self) -> CappedPipe {
        self.stderr.clone()
    }

    /// Keeps `line` if it fits within the bound; counts it as dropped otherwise.
    pub(super) fn push(&mut self, line: LogLine) {
        let size = line.size();
        if self.bytes + size > self.cap {
            self.dropped += 1;
            return;
        }
        self.bytes += size;
        self.lines.push(line);
    }

    /// The lines kept so far (stdio not yet collected).
    pub(super) fn lines(&self) -> &[LogLine] {
        &self.lines
    }

    /// Turns what stdout and stderr captured into lines and returns every line with the
    /// count of lines and bytes dropped past the bound.
    pub(super) fn finish(mut self) -> (Vec<LogLine>, u64) {
        for (pipe, stream, level) in [
            (&self.stdout, "stdout", tracing::Level::INFO),
            (&self.stderr, "stderr", tracing::Level::WARN),
        ] {
            let (bytes, dropped) = pipe.take();
            self.dropped += dropped;
            for line in String::from_utf8_lossy(&bytes)
                .lines()
                .filter(|l| !l.is_empty())
            {
                self.lines.push(LogLine {
                    level,
                    message: line.to_owned(),
                    fields: vec![("stream".to_owned(), stream.to_owned())],
                });
            }
        }
        (self.lines, self.dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(message: &str) -> LogLine {
        LogLine {
            level: tracing::Level::INFO,
            message: message.to_owned(),
            fields: Vec::new(),
        }
    }

    #[test]
    fn lines_past_the_bound_are_counted_not_kept() {
        let mut log = Log::new(5);
        log.push(line("abc"));
        log.push(line("def"));
        log.push(line("gh"));
        let (lines, dropped) = log.finish();
        assert_eq!(lines, vec![line("abc"), line("gh")]);
        assert_eq!(dropped, 1);
    }
}
