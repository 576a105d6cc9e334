//! Questions asked on the terminal. Prompts go to stderr so that stdout
//! carries only results, even in an interactive session.

use std::io::{BufRead, IsTerminal, Write};

/// Whether a person can answer questions: stdin is a terminal.
pub fn interactive() -> bool {
    std::io::stdin().is_terminal()
}

/// Whether stdout is a terminal (paging only makes sense there).
pub fn stdout_is_terminal() -> bool {
    std::io::stdout().is_terminal()
}

/// Reads one line from stdin without its line ending; `None` at end of input.
pub fn read_line() -> std::io::Result<Option<String>> {
    let mut line = String::new();
    if std::io::stdin().lock().read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let trimmed = line.trim_end_matches(['\n', '\r']).len();
    line.truncate(trimmed);
    Ok(Some(line))
}

/// Shows `prompt` on stderr and reads the answer from stdin.
pub fn ask(prompt: &str) -> std::io::Result<Option<String>> {
    let mut stderr = std::io::stderr().lock();
    write!(stderr, "{prompt}")?;
    stderr.flush()?;
    drop(stderr);
    read_line()
}

/// A `[y/N]` question: only an explicit yes counts.
pub fn ask_yes_no(prompt: &str) -> std::io::Result<bool> {
    Ok(ask(prompt)?.is_some_and(|answer| matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes")))
}
