//! A second thread for the lookups of a long directory listing.
//!
//! A READDIRPLUS answers every name with the node and attributes a LOOKUP would give.
//! On a cold cache each of those is a `stat` of a backing file whose inode the backing
//! file system must first read: most of the time a listing takes, while the program that
//! asked is blocked and the machine's other CPU is idle. A listing with many names
//! shares them with this helper: both threads take the next name from one counter, so
//! the helper adds what it can from the moment it wakes up, and a listing never waits for
//! a helper that has not started on it. One helper per server; a listing that finds it
//! busy with another does all its lookups itself.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// Listings with fewer names than this are not shared: waking the helper costs about as
/// much as this many lookups on a warm cache.
pub const MIN_SHARED: usize = 16;

/// Where a job is between the listing thread (L) and the helper (H).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Handed to H, which has not taken it yet.
    Posted,
    /// H is working on it; L waits for `Done` before it reads the results.
    Running,
    /// H finished its part.
    Done,
    /// L finished every name before H took the job: H leaves it alone.
    Closed,
}

/// The names of one listing chunk to look up, shared by two threads.
#[derive(Debug)]
pub struct Job<T> {
    /// The directory's node id.
    pub dir: u64,
    /// The open backing directory (the listing thread keeps it open until the job ends).
    pub fd: std::os::fd::RawFd,
    names: Vec<u8>,
    /// End of each name in `names` (the names are NUL-terminated there).
    ends: Vec<usize>,
    next: AtomicUsize,
    state: Mutex<State>,
    cv: Condvar,
    /// The helper's results, by name index.
    results: Mutex<Vec<(usize, T)>>,
}

impl<T> Job<T> {
    /// A job for directory node `dir` open at `fd`; names are added with [`Job::push`].
    pub fn new(dir: u64, fd: std::os::fd::RawFd) -> Job<T> {
        Job {
            dir,
            fd,
            names: Vec::new(),
            ends: Vec::new(),
            next: AtomicUsize::new(0),
            state: Mutex::new(State::Posted),
            cv: Condvar::new(),
            results: Mutex::new(Vec::new()),
        }
    }

    /// Adds a name (without its NUL); returns its index.
    pub fn push(&mut self, name: &[u8]) -> usize {
        self.names.extend_from_slice(name);
        self.names.push(0);
        self.ends.push(self.names.len());
        self.ends.len() - 1
    }

    /// How many names the job has.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Name `i`, NUL-terminated (`None` for a name that held a NUL itself, which a
    /// directory entry never does).
    pub fn name(&self, i: usize) -> Option<&std::ffi::CStr> {
        let start = if i == 0 { 0 } else { *self.ends.get(i - 1)? };
        let bytes = self.names.get(start..*self.ends.get(i)?)?;
        std::ffi::CStr::from_bytes_with_nul(bytes).ok()
    }

    /// The next name nobody has taken yet (its index), if any.
    pub fn take(&self) -> Option<usize> {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        (i < self.len()).then_some(i)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // No code holding this lock panics.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// For the listing thread, after `take` ran dry: the helper's results, once it has
    /// finished its part (empty if it never started).
    pub fn finish(&self) -> Vec<(usize, T)> {
        let mut st = self.state();
        if *st == State::Posted {
            *st = State::Closed;
            return Vec::new();
        }
        while *st == State::Running {
            st = self.cv.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        drop(st);
        std::mem::take(&mut *self.results.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// For the helper: whether it may work on the job (the listing thread has not
    /// finished it without help).
    fn start(&self) -> bool {
        let mut st = self.state();
        if *st != State::Posted {
            return false;
        }
        *st = State::Running;
        true
    }

    /// For the helper: hands its results over.
    fn done(&self, results: Vec<(usize, T)>) {
        *self.results.lock().unwrap_or_else(|p| p.into_inner()) = results;
        *self.state() = State::Done;
        self.cv.notify_all();
    }
}

/// Marks a job done even if the helper unwinds while working on it, so the listing
/// thread never waits for ever.
struct DoneGuard<'a, T> {
    job: &'a Job<T>,
    results: Vec<(usize, T)>,
}

impl<T> Drop for DoneGuard<'_, T> {
    fn drop(&mut self) {
        self.job.done(std::mem::take(&mut self.results));
    }
}

#[derive(Debug)]
struct Slot<T> {
    job: Option<Arc<Job<T>>>,
    /// The helper is working on a job.
    busy: bool,
    stop: bool,
}

/// The helper thread's mailbox.
#[derive(Debug)]
pub struct Helper<T> {
    slot: Mutex<Slot<T>>,
    cv: Condvar,
}

impl<T> Default for Helper<T> {
    fn default() -> Helper<T> {
        Helper {
            slot: Mutex::new(Slot {
                job: None,
                busy: false,
                stop: false,
            }),
            cv: Condvar::new(),
        }
    }
}

impl<T> Helper<T> {
    fn slot(&self) -> MutexGuard<'_, Slot<T>> {
        // No code holding this lock panics.
        self.slot.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Offers `job` to the helper; false when it is busy (or stopped): then the caller
    /// does the whole job itself and need not call [`Job::finish`].
    pub fn post(&self, job: &Arc<Job<T>>) -> bool {
        let mut s = self.slot();
        if s.busy || s.stop || s.job.is_some() {
            return false;
        }
        s.job = Some(Arc::clone(job));
        drop(s);
        self.cv.notify_one();
        true
    }

    /// The helper thread's loop: runs `work(job, i)` for the names it takes from each
    /// job until [`Helper::stop`].
    pub fn run(&self, mut work: impl FnMut(&Job<T>, usize) -> T) {
        loop {
            let mut s = self.slot();
            let job = loop {
                if s.stop {
                    return;
                }
                if let Some(job) = s.job.take() {
                    s.busy = true;
                    break job;
                }
                s = self.cv.wait(s).unwrap_or_else(|p| p.into_inner());
            };
            drop(s);
            if job.start() {
                let mut guard = DoneGuard {
                    job: &job,
                    results: Vec::new(),
                };
                while let Some(i) = job.take() {
                    let r = work(&job, i);
                    guard.results.push((i, r));
                }
            }
            self.slot().busy = false;
        }
    }

    /// Ends the helper's loop (after the job it is working on).
    pub fn stop(&self) {
        self.slot().stop = true;
        self.cv.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(n: usize) -> Arc<Job<usize>> {
        let mut j = Job::new(1, -1);
        for i in 0..n {
            j.push(format!("name-{i}").as_bytes());
        }
        Arc::new(j)
    }

    #[test]
    fn names_round_trip() {
        let j = job(3);
        assert_eq!(j.len(), 3);
        assert_eq!(j.name(0).unwrap().to_bytes(), b"name-0");
        assert_eq!(j.name(2).unwrap().to_bytes(), b"name-2");
        assert!(j.name(3).is_none());
        let mut bad = Job::<()>::new(1, -1);
        bad.push(b"a\0b");
        assert!(bad.name(0).is_none(), "a name with a NUL inside is refused");
    }

    #[test]
    fn a_job_finished_before_the_helper_took_it_is_left_alone() {
        let h: Helper<usize> = Helper::default();
        let j = job(4);
        assert!(h.post(&j));
        while j.take().is_some() {}
        assert!(j.finish().is_empty());
        // The helper takes the closed job later and must not touch it.
        std::thread::scope(|s| {
            s.spawn(|| h.run(|_, i| i));
            while h.slot().job.is_some() || h.slot().busy {
                std::thread::yield_now();
            }
            h.stop();
        });
        assert!(j.finish().is_empty());
    }

    #[test]
    fn both_threads_together_look_every_name_up_once() {
        let h: Helper<usize> = Helper::default();
        std::thread::scope(|s| {
            s.spawn(|| {
                h.run(|job, i| {
                    assert_eq!(
                        job.name(i).unwrap().to_bytes(),
                        format!("name-{i}").as_bytes()
                    );
                    std::thread::sleep(std::time::Duration::from_micros(50));
                    i
                })
            });
            for _ in 0..50 {
                let j = job(200);
                let posted = h.post(&j);
                let mut mine = Vec::new();
                while let Some(i) = j.take() {
                    std::thread::sleep(std::time::Duration::from_micros(50));
                    mine.push(i);
                }
                let theirs = if posted { j.finish() } else { Vec::new() };
                let mut all: Vec<usize> =
                    mine.into_iter().chain(theirs.iter().map(|r| r.1)).collect();
                all.sort_unstable();
                assert_eq!(all, (0..200).collect::<Vec<_>>());
                assert!(theirs.iter().all(|&(i, r)| i == r));
            }
            h.stop();
        });
    }

    #[test]
    fn a_busy_or_stopped_helper_refuses_jobs() {
        let h: Helper<usize> = Helper::default();
        let j = job(1);
        assert!(h.post(&j));
        assert!(!h.post(&job(1)), "a job is already waiting");
        h.stop();
        let h2: Helper<usize> = Helper::default();
        h2.stop();
        assert!(!h2.post(&j));
    }

    #[test]
    fn a_helper_that_panics_still_releases_the_listing() {
        let h: Helper<usize> = Helper::default();
        let j = job(100);
        std::thread::scope(|s| {
            let t = s.spawn(|| h.run(|_, _| panic!("lookup failed badly")));
            assert!(h.post(&j));
            // Wait until the helper has taken the job (and panicked on it) or left it.
            let _ = t.join();
        });
        let mut mine = 0;
        while j.take().is_some() {
            mine += 1;
        }
        let theirs = j.finish();
        assert_eq!(
            mine + theirs.len(),
            99,
            "the name the helper died on is lost, no more"
        );
    }
}
