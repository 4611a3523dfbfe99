//! `airlock-supervisor RUN_DIR`: the supervisor process of one local run, for runtimes started with
//! `--local-supervisor <path of this binary>` (by default the dispatcher and `airlock dev` use their own
//! executable's hidden mode instead). See `airlock_backend::local` (its `supervisor` module).

use std::path::Path;
use std::process::ExitCode;

fn main() -> ExitCode {
    let Some(dir) = std::env::args_os().nth(1) else {
        eprintln!("usage: airlock-supervisor RUN_DIR");
        return ExitCode::from(2);
    };
    airlock_backend::local::supervise_process(Path::new(&dir))
}
