//! Fault injection (issue 19): `dmm train` and `dmm landmarks` killed with SIGKILL at random
//! moments (some of them inside a checkpoint or CSV write) and resumed each time, and training
//! whose disk fills up. The finished results must equal, byte for byte, those of a run that was never
//! interrupted. These take minutes, so they are ignored by default: `cargo xtask faults` runs
//! them in release. `DMM_FAULTS_SEED=N` replays one schedule of kills (each test prints its seed).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How many times each command is killed.
const KILLS: usize = 20;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn dmm() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_dmm"));
    c.current_dir(repo()).stdout(Stdio::null()).stderr(Stdio::piped());
    c
}

/// Random delays from dmm's SplitMix64, seeded from `DMM_FAULTS_SEED` or the clock.
struct Rng(dmm_data::SplitMix64);

impl Rng {
    fn new(test: &str) -> Self {
        let seed = std::env::var("DMM_FAULTS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
        });
        eprintln!("{test}: DMM_FAULTS_SEED={seed}");
        Self(dmm_data::SplitMix64::new(seed))
    }

    /// Uniform in [0, d).
    fn below(&mut self, d: Duration) -> Duration {
        d.mul_f64((self.0.next_u64() >> 11) as f64 / (1u64 << 53) as f64)
    }
}

/// The temporary files of atomic writes in progress in `dir` (`.NAME.tmpPID`).
fn temporaries(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    entries
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|n| n.starts_with('.') && n.contains(".tmp"))
        .collect()
}

/// How a started command ended.
enum Ended {
    /// Killed: whether a write was in progress at that moment.
    Killed { mid_write: bool },
    /// It finished by itself.
    Exited(Output),
}

/// Runs `cmd` and kills it (SIGKILL) after a random delay below `within` or, when `at_a_write`,
/// at the first atomic write (a temporary file showing up in `watch`) after that delay.
fn run_and_kill(mut cmd: Command, watch: &Path, at_a_write: bool, within: Duration, rng: &mut Rng) -> Ended {
    // Left by an earlier kill (the new process removes them): not a write of this one.
    let stale = temporaries(watch);
    let fresh = || temporaries(watch).into_iter().filter(|t| !stale.contains(t)).collect::<Vec<_>>();
    let mut child: Child = cmd.spawn().expect("dmm starts");
    let deadline = Instant::now() + rng.below(within);
    loop {
        if let Some(_status) = child.try_wait().unwrap() {
            return Ended::Exited(child.wait_with_output().unwrap());
        }
        let due = Instant::now() >= deadline;
        if due && (!at_a_write || !fresh().is_empty()) {
            child.kill().unwrap();
            child.wait().unwrap();
            // A temporary file of this process still there after the kill: the write was cut.
            return Ended::Killed { mid_write: !fresh().is_empty() };
        }
        std::thread::sleep(Duration::from_micros(if at_a_write && due { 50 } else { 500 }));
    }
}

fn success(out: &Output, what: &str) {
    assert!(out.status.success(), "{what} failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// A small but real run: every head, landmarks, 36 iterations, 19 evaluations (so 19 rewrites of
/// each checkpoint and line of `metrics.jsonl` to be cut).
fn train(out: &Path) -> Command {
    let mut c = dmm();
    c.args(["train", "--dataset", "celeba", "--root", "data/celeba", "--landmarks", "data/celeba/landmarks.csv", "--preset", "smoke"])
        .args(["--width", "4", "--epochs", "3", "--eval-every", "2", "--max-train", "96", "--quiet", "--resume", "--out"])
        .arg(out);
    c
}

/// The files a finished run must reproduce exactly.
const RUN_FILES: [&str; 4] = ["model.safetensors", "metrics.jsonl", "last.safetensors", "config.json"];

fn same_files(a: &Path, b: &Path, names: &[&str]) {
    for name in names {
        let (x, y) = (std::fs::read(a.join(name)).unwrap(), std::fs::read(b.join(name)).unwrap());
        assert!(x == y, "{name} differs from the uninterrupted run's ({} against {} bytes)", x.len(), y.len());
    }
}

/// An uninterrupted run in `dir`, and how long it took.
fn reference_run(dir: &Path) -> Duration {
    let started = Instant::now();
    success(&train(dir).output().unwrap(), "the uninterrupted run");
    started.elapsed()
}

#[test]
#[ignore = "minutes; run by `cargo xtask faults`"]
fn killed_training_resumes_to_the_same_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let reference = tmp.path().join("reference");
    let took = reference_run(&reference);
    let mut rng = Rng::new("killed_training_resumes_to_the_same_bytes");
    let (mut kills, mut mid_write, mut rounds) = (0, 0, 0);
    while kills < KILLS {
        // One round: start, kill and resume until the run finishes by itself.
        rounds += 1;
        let run = tmp.path().join(format!("round{rounds}"));
        loop {
            // Every other kill waits for a checkpoint (or metrics) write to be under way.
            let at_a_write = kills % 2 == 1;
            match run_and_kill(train(&run), &run, at_a_write, took / 4, &mut rng) {
                Ended::Killed { mid_write: cut } => {
                    kills += 1;
                    mid_write += usize::from(cut);
                }
                Ended::Exited(out) => {
                    success(&out, &format!("round {rounds} after {kills} kills"));
                    break;
                }
            }
        }
        same_files(&run, &reference, &RUN_FILES);
        assert_eq!(temporaries(&run), Vec::<String>::new(), "temporary files left in {}", run.display());
    }
    eprintln!("dmm train: {kills} kills ({mid_write} inside a write) over {rounds} runs; every run ended byte-identical to the uninterrupted one ({:.1} s)", took.as_secs_f64());
    assert!(mid_write > 0, "no kill landed inside a write");
}

/// A run on a 1-page-granular tmpfs too small for its checkpoints fails with one line naming the
/// file, keeps its previous resume point loadable, and `--resume` finishes it, byte-identical,
/// once there is room. Needs root to mount the tmpfs; says so and passes otherwise.
#[test]
#[ignore = "minutes; run by `cargo xtask faults`"]
fn a_full_disk_fails_with_one_line_and_resume_continues() {
    let tmp = tempfile::tempdir().unwrap();
    let reference = tmp.path().join("reference");
    reference_run(&reference);
    let size = |n: &str| std::fs::metadata(reference.join(n)).unwrap().len();
    let (last, best) = (size("last.safetensors"), size("model.safetensors"));
    let mount = tmp.path().join("small");
    std::fs::create_dir(&mount).unwrap();
    // Room for the first checkpoints and half of the next resume point's temporary copy.
    let limit = (best + last + last / 2).div_ceil(4096) * 4096;
    let mounted = Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={limit}"), "tmpfs"]).arg(&mount).output();
    if !mounted.as_ref().is_ok_and(|o| o.status.success()) {
        eprintln!("skipped: cannot mount a size-limited tmpfs here (needs root): {mounted:?}");
        return;
    }
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(self.0).status();
        }
    }
    let _unmount = Unmount(&mount);
    let run = mount.join("run");

    let out = train(&run).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "a full disk must fail the run: {}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains(&run.display().to_string()) && errors[0].contains("No space left on device"), "{}", errors[0]);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(temporaries(&run), Vec::<String>::new(), "a failed write left its temporary file");
    let eval = dmm()
        .args(["eval", "--dataset", "celeba", "--root", "data/celeba", "--split", "test", "--json", "--model"])
        .arg(run.join("last.safetensors"))
        .output()
        .unwrap();
    success(&eval, "evaluating the resume point left by the failed run");

    let grown = Command::new("mount").args(["-o", "remount,size=256M"]).arg(&mount).status().unwrap();
    assert!(grown.success(), "remount with room");
    success(&train(&run).output().unwrap(), "resuming once there is room");
    same_files(&run, &reference, &RUN_FILES);
    eprintln!("full disk at {limit} bytes: one line ({}), resumed to the same bytes", errors[0]);
}

/// `dmm landmarks` over the bundled images, 16 to a chunk, killed 20 times (every other time while
/// its CSV is being rewritten) and rerun: the CSV always parses, never holds a key twice, and ends with
/// exactly the rows of an uninterrupted run.
#[cfg(feature = "dlib")]
#[test]
#[ignore = "minutes; run by `cargo xtask faults`"]
fn killed_landmarks_lose_and_duplicate_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let images = repo().join("data/celeba/img_align_celeba");
    let landmarks = |csv: &Path| {
        let mut c = dmm();
        c.args(["landmarks", "--jobs", "1", "--chunk", "16", "--images"]).arg(&images).arg("--out").arg(csv);
        c
    };
    let reference = tmp.path().join("reference.csv");
    let started = Instant::now();
    success(&landmarks(&reference).output().unwrap(), "the uninterrupted landmark run");
    let took = started.elapsed();
    let want = std::fs::read_to_string(&reference).unwrap();
    let want_noface = std::fs::read_to_string(format!("{}.noface", reference.display())).unwrap_or_default();

    let mut rng = Rng::new("killed_landmarks_lose_and_duplicate_nothing");
    let (mut kills, mut mid_write, mut rounds) = (0, 0, 0);
    while kills < KILLS {
        rounds += 1;
        let dir = tmp.path().join(format!("round{rounds}"));
        std::fs::create_dir(&dir).unwrap();
        let csv = dir.join("landmarks.csv");
        loop {
            let ended = run_and_kill(landmarks(&csv), &dir, kills % 2 == 1, took / 3, &mut rng);
            if csv.exists() {
                let text = std::fs::read_to_string(&csv).unwrap();
                let mut keys = std::collections::HashSet::new();
                for (i, line) in text.lines().enumerate().skip(1) {
                    let fields: Vec<&str> = line.split(',').collect();
                    assert_eq!(fields.len(), 1 + 2 * 68, "line {} of the CSV after kill {kills}", i + 1);
                    assert!(fields[1..].iter().all(|f| f.parse::<f32>().is_ok()), "line {} does not parse", i + 1);
                    assert!(keys.insert(fields[0].to_string()), "{} listed twice after kill {kills}", fields[0]);
                }
                // Every row written so far is the uninterrupted run's row.
                assert!(text.lines().all(|l| want.lines().any(|w| w == l)), "a row differs from the uninterrupted run's");
            }
            match ended {
                Ended::Killed { mid_write: cut } => {
                    kills += 1;
                    mid_write += usize::from(cut);
                }
                Ended::Exited(out) => {
                    success(&out, &format!("landmarks round {rounds}"));
                    break;
                }
            }
        }
        assert_eq!(std::fs::read_to_string(&csv).unwrap(), want, "round {rounds}: the CSV differs from the uninterrupted run's");
        let noface = std::fs::read_to_string(dir.join("landmarks.csv.noface")).unwrap_or_default();
        let sorted = |s: &str| {
            let mut v: Vec<String> = s.lines().map(str::to_string).collect();
            v.sort();
            v
        };
        assert_eq!(sorted(&noface), sorted(&want_noface), "round {rounds}: the no-face list differs");
        assert_eq!(temporaries(&dir), Vec::<String>::new(), "temporary files left in {}", dir.display());
    }
    eprintln!("dmm landmarks: {kills} kills ({mid_write} inside a write) over {rounds} runs; every CSV parsed, without duplicates, and ended equal ({:.1} s uninterrupted)", took.as_secs_f64());
}
