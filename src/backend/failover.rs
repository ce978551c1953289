//! Several model services behind one [`EditService`]: each job goes to the first service, in
//! priority order, that is not down. A service is down for a job when it cannot be reached or
//! answers 5xx, 429 or an operator problem after its own retries; after
//! [`FAILURES_TO_OPEN`] such failures in a row its circuit opens and jobs skip it for
//! [`Services::new`]'s `cooldown`, after which one job tries it again (and closes the circuit
//! when it succeeds). A refusal of the content or of the request is the answer, whichever
//! service gives it: it never moves a job to another service (that would only spend more).
//!
//! Answers name their service twice: in [`Answer::service`] for the ledger, and as a prefix of
//! each part (`@name part`), so a stored answer is redeemed by the service that made it after a
//! restart. Parts without the prefix (stored by a release with one service) go to the first.

use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::core::image::{ALL_FORMATS, Format, InputRules};
use crate::core::ports::BoxFuture;
use crate::core::ports::model::{Answer, BackendError, EditRequest, EditService, ModelCaps};

/// Down answers in a row that open a service's circuit.
pub const FAILURES_TO_OPEN: u32 = 3;

/// The time source of the circuits (tests pass one they move by hand).
pub type Clock = Arc<dyn Fn() -> Instant + Send + Sync>;

/// One configured service and its name (`backend.name`).
pub struct Member {
    pub name: String,
    pub service: Arc<dyn EditService>,
}

#[derive(Default)]
struct Circuit {
    failures: u32,
    open_until: Option<Instant>,
}

impl Circuit {
    fn is_open(&self, now: Instant) -> bool {
        self.open_until.is_some_and(|t| now < t)
    }
}

/// The configured services, tried in order.
pub struct Services {
    members: Vec<(Member, Mutex<Circuit>)>,
    cooldown: Duration,
    clock: Clock,
    caps: ModelCaps,
    rules: InputRules,
}

impl Services {
    /// `members` in priority order (at least one).
    pub fn new(members: Vec<Member>, cooldown: Duration, clock: Clock) -> Self {
        assert!(!members.is_empty(), "at least one model service");
        let caps = members
            .iter()
            .map(|m| m.service.caps())
            .reduce(common_caps)
            .expect("one member");
        let rules = members
            .iter()
            .map(|m| m.service.input_rules())
            .reduce(common_rules)
            .expect("one member");
        Self {
            members: members.into_iter().map(|m| (m, Mutex::default())).collect(),
            cooldown,
            clock,
            caps,
            rules,
        }
    }

    /// With the real clock and a 30 s cooldown.
    pub fn with_defaults(members: Vec<Member>) -> Self {
        Self::new(members, Duration::from_secs(30), Arc::new(Instant::now))
    }

    /// Whether `name`'s circuit is open now (jobs skip it).
    pub fn is_open(&self, name: &str) -> bool {
        let now = (self.clock)();
        self.members
            .iter()
            .find(|(m, _)| m.name == name)
            .is_some_and(|(_, c)| lock(c).is_open(now))
    }

    /// The order to try the services in for one job: closed (or cooled-down) circuits first, in
    /// priority order; open ones after them, so a job still runs when every circuit is open.
    fn order(&self) -> Vec<usize> {
        let now = (self.clock)();
        let open = |i: usize| lock(&self.members[i].1).is_open(now);
        let (mut usable, skipped): (Vec<usize>, Vec<usize>) =
            (0..self.members.len()).partition(|&i| !open(i));
        usable.extend(skipped);
        usable
    }

    fn succeeded(&self, i: usize) {
        *lock(&self.members[i].1) = Circuit::default();
    }

    fn failed(&self, i: usize) {
        let mut c = lock(&self.members[i].1);
        c.failures += 1;
        if c.failures >= FAILURES_TO_OPEN {
            c.open_until = Some((self.clock)() + self.cooldown);
            tracing::warn!(service = %self.members[i].0.name, "model service down; its circuit is open");
        }
    }

    async fn edit_any(&self, req: &EditRequest) -> Result<Answer, BackendError> {
        let mut first_error = None;
        for i in self.order() {
            let member = &self.members[i].0;
            match member.service.edit(req).await {
                Ok(mut answer) => {
                    self.succeeded(i);
                    answer.parts = answer
                        .parts
                        .into_iter()
                        .map(|p| format!("@{} {p}", member.name))
                        .collect();
                    answer.service = Some(member.name.clone());
                    return Ok(answer);
                }
                Err(e) if is_down(&e) => {
                    self.failed(i);
                    tracing::warn!(service = %member.name, code = %e.code(),
                        "model service failed; trying the next one");
                    first_error.get_or_insert(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(first_error.expect("one member was tried"))
    }

    /// The service a stored part belongs to, and the part as that service made it.
    fn owner<'p>(&self, part: &'p str) -> (&dyn EditService, &'p str) {
        if let Some(rest) = part.strip_prefix('@')
            && let Some((name, inner)) = rest.split_once(' ')
            && let Some((m, _)) = self.members.iter().find(|(m, _)| m.name == name)
        {
            return (m.service.as_ref(), inner);
        }
        (self.members[0].0.service.as_ref(), part)
    }
}

/// Whether an error says the service is down (another one may serve the job), rather than
/// answering it.
pub fn is_down(e: &BackendError) -> bool {
    e.is_retryable() || matches!(e, BackendError::Operator { .. })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What every service can do: a request is only accepted when any of them could serve it.
fn common_caps(a: ModelCaps, b: ModelCaps) -> ModelCaps {
    ModelCaps {
        max_n: a.max_n.min(b.max_n),
        prompt_extend: a.prompt_extend && b.prompt_extend,
        size_sides: match (a.size_sides, b.size_sides) {
            (Some((a0, a1)), Some((b0, b1))) if a0.max(b0) <= a1.min(b1) => {
                Some((a0.max(b0), a1.min(b1)))
            }
            _ => None,
        },
    }
}

/// Inputs every service takes as they are.
fn common_rules(a: InputRules, b: InputRules) -> InputRules {
    let formats: Vec<Format> = a
        .formats
        .iter()
        .filter(|f| b.formats.contains(f))
        .copied()
        .collect();
    InputRules {
        min_side: a.min_side.max(b.min_side),
        max_side: a.max_side.min(b.max_side),
        useful_side: a.useful_side.min(b.useful_side),
        max_file_bytes: a.max_file_bytes.min(b.max_file_bytes),
        formats: static_formats(&formats),
    }
}

/// The `'static` slice of [`ALL_FORMATS`]' subsets equal to `formats` (built once per set, at
/// startup: there are at most 64).
fn static_formats(formats: &[Format]) -> &'static [Format] {
    if formats.len() == ALL_FORMATS.len() {
        return ALL_FORMATS;
    }
    Box::leak(formats.to_vec().into_boxed_slice())
}

impl EditService for Services {
    fn model(&self) -> &str {
        self.members[0].0.service.model()
    }

    fn caps(&self) -> ModelCaps {
        self.caps
    }

    fn input_rules(&self) -> InputRules {
        self.rules
    }

    fn edit<'a>(&'a self, req: &'a EditRequest) -> BoxFuture<'a, Result<Answer, BackendError>> {
        Box::pin(self.edit_any(req))
    }

    fn redeem<'a>(
        &'a self,
        part: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, Result<Bytes, BackendError>> {
        let (service, inner) = self.owner(part);
        service.redeem(inner, limit)
    }
}
