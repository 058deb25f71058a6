//! Probes against the split admit path of `Verifier::finish` (`admit_now` until a policy
//! answers `Admit::Later` or refuses, then the boxed `admit_later`): every admit called once
//! and in order, refunds of exactly the earlier receipts, the outcome every observer and
//! `Pending` sees, the first detail, no admit before the admit step, and a dropped `finish`;
//! then the same under concurrency, with an audit sink and last use, and on the
//! authenticator path. Every probe passed against the change when written.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use apitoken::policy::{Admit, Admitted, Outcome, Pending, Policy};
use apitoken::{
    AuthError, AuthErrorKind, MemoryStore, NewToken, Owner, PluginReason, Principal, RejectReason,
    RequestInfo, ScopeRequirement, TokenRecord, TokenStore, Verifier,
};

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

/// What one scripted policy's `admit` answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// `Admit::Now(Ok)` with no detail: spent nothing.
    NowOk,
    /// `Admit::Now(Ok)` with a `Tag` detail: spent something.
    NowSpend,
    /// `Admit::Now(Err)`.
    NowRefuse,
    /// `Admit::Later`, answering `Ok` with no detail after one `Pending` poll.
    LaterOk,
    /// `Admit::Later`, answering `Ok` with a `Tag` detail after one `Pending` poll.
    LaterSpend,
    /// `Admit::Later`, answering `Err` after one `Pending` poll.
    LaterRefuse,
    /// `Admit::Later`, never answering.
    LaterNever,
}

const STEPS: [Step; 6] = [
    Step::NowOk,
    Step::NowSpend,
    Step::NowRefuse,
    Step::LaterOk,
    Step::LaterSpend,
    Step::LaterRefuse,
];

impl Step {
    fn spends(self) -> bool {
        matches!(self, Step::NowSpend | Step::LaterSpend)
    }

    fn refuses(self) -> bool {
        matches!(self, Step::NowRefuse | Step::LaterRefuse)
    }
}

/// The detail a spending policy attaches: its own index, so a refund's receipt can be checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tag(usize);

/// Shared by every scripted policy of a test: what each answers, and what happened.
#[derive(Default)]
struct Script {
    steps: Mutex<Vec<Step>>,
    log: Mutex<Vec<Event>>,
    /// Whether `before_lookup` of policy `i` refuses.
    refuse_before: Mutex<Option<usize>>,
    /// Whether `on_record` of policy `i` refuses.
    refuse_on_record: Mutex<Option<usize>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Event {
    Admit(usize),
    /// A refund of policy `.0` with the receipt's tag `.1`.
    Refund(usize, Option<Tag>),
    /// `observe` of policy `.0`: accepted, had a principal, error kind.
    Observe(usize, bool, bool, Option<AuthErrorKind>),
    /// A `Pending` of policy `.0` settled: accepted, had a principal, error kind.
    Settle(usize, bool, bool, Option<AuthErrorKind>),
    /// A `Pending` of policy `.0` dropped unsettled.
    PendingDropped(usize),
    /// A `Later` future of policy `.0` dropped before it answered.
    LaterDropped(usize),
}

impl Script {
    fn set(&self, steps: &[Step]) {
        *self.steps.lock().unwrap() = steps.to_vec();
        self.log.lock().unwrap().clear();
    }

    fn push(&self, event: Event) {
        self.log.lock().unwrap().push(event);
    }

    fn take(&self) -> Vec<Event> {
        std::mem::take(&mut *self.log.lock().unwrap())
    }

    fn step(&self, index: usize) -> Step {
        self.steps.lock().unwrap()[index]
    }
}

fn refusal() -> AuthError {
    AuthError::rate_limited(Duration::from_secs(7), None)
}

/// Marks a `Pending` dropped without being settled.
struct PendingGuard {
    script: Arc<Script>,
    index: usize,
    settled: bool,
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        if !self.settled {
            self.script.push(Event::PendingDropped(self.index));
        }
    }
}

/// Marks a `Later` future dropped before it answered.
struct LaterGuard {
    script: Arc<Script>,
    index: usize,
    answered: bool,
}

impl Drop for LaterGuard {
    fn drop(&mut self) {
        if !self.answered {
            self.script.push(Event::LaterDropped(self.index));
        }
    }
}

/// Pending once (waking itself), then ready: a genuine wait that needs no runtime.
struct YieldOnce(bool);

impl Future for YieldOnce {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            Poll::Ready(())
        } else {
            self.0 = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
}

struct Scripted {
    index: usize,
    script: Arc<Script>,
}

fn facts(outcome: &Outcome<'_>) -> (bool, bool, Option<AuthErrorKind>) {
    (
        outcome.is_accepted(),
        outcome.principal().is_some(),
        outcome.error().map(AuthError::kind),
    )
}

impl Policy for Scripted {
    fn before_lookup(&self, _: &RequestInfo) -> Result<Pending, AuthError> {
        if *self.script.refuse_before.lock().unwrap() == Some(self.index) {
            return Err(AuthError::invalid_token(
                RejectReason::Plugin(PluginReason::new("probe_before")),
                None,
            ));
        }
        let guard = PendingGuard {
            script: Arc::clone(&self.script),
            index: self.index,
            settled: false,
        };
        Ok(Pending::on_outcome(move |outcome| {
            // The whole guard, not its fields: dropped with the closure.
            let mut guard = guard;
            guard.settled = true;
            let (accepted, principal, kind) = facts(outcome);
            guard
                .script
                .push(Event::Settle(guard.index, accepted, principal, kind));
        }))
    }

    fn on_record(&self, record: &TokenRecord, _: &RequestInfo) -> Result<(), AuthError> {
        if *self.script.refuse_on_record.lock().unwrap() == Some(self.index) {
            return Err(AuthError::invalid_token(
                RejectReason::Plugin(PluginReason::new("probe_on_record")),
                Some(record.id),
            ));
        }
        Ok(())
    }

    fn admit<'a>(&'a self, _: &'a Principal, _: &'a RequestInfo) -> Admit<'a> {
        self.script.push(Event::Admit(self.index));
        let step = self.script.step(self.index);
        let answer = |step: Step| -> Result<Admitted, AuthError> {
            if step.refuses() {
                Err(refusal())
            } else if step.spends() {
                Ok(Admitted::new().with_detail(Tag(self.index)))
            } else {
                Ok(Admitted::new())
            }
        };
        match step {
            Step::NowOk | Step::NowSpend | Step::NowRefuse => Admit::Now(answer(step)),
            Step::LaterOk | Step::LaterSpend | Step::LaterRefuse | Step::LaterNever => {
                let guard = LaterGuard {
                    script: Arc::clone(&self.script),
                    index: self.index,
                    answered: false,
                };
                Admit::Later(Box::pin(async move {
                    // The whole guard, not its field: dropped with the future.
                    let mut guard = guard;
                    if step == Step::LaterNever {
                        std::future::pending::<()>().await;
                    }
                    YieldOnce(false).await;
                    guard.answered = true;
                    answer(step)
                }))
            }
        }
    }

    fn refund<'a>(
        &'a self,
        _: &'a Principal,
        _: &'a RequestInfo,
        receipt: &'a Admitted,
    ) -> Option<Pin<Box<dyn Future<Output = ()> + Send + 'a>>> {
        let tag = receipt.detail::<Tag>().copied();
        Some(Box::pin(async move {
            YieldOnce(false).await;
            self.script.push(Event::Refund(self.index, tag));
        }))
    }

    fn observe(&self, outcome: &Outcome<'_>) {
        let (accepted, principal, kind) = facts(outcome);
        self.script
            .push(Event::Observe(self.index, accepted, principal, kind));
    }
}

/// Policies `0..own` are the verifier's, `own..total` are `extra`.
struct Rig {
    verifier: Verifier<MemoryStore>,
    extra: Vec<Arc<dyn Policy>>,
    script: Arc<Script>,
    token: String,
}

async fn rig(own: usize, total: usize) -> Rig {
    let script = Arc::new(Script::default());
    let mut builder = Verifier::builder(MemoryStore::new());
    for index in 0..own {
        builder = builder.policy(Scripted {
            index,
            script: Arc::clone(&script),
        });
    }
    let verifier = builder.build();
    let extra: Vec<Arc<dyn Policy>> = (own..total)
        .map(|index| {
            Arc::new(Scripted {
                index,
                script: Arc::clone(&script),
            }) as Arc<dyn Policy>
        })
        .collect();
    let token = issue(&verifier, &["vps:read"]).await;
    Rig {
        verifier,
        extra,
        script,
        token,
    }
}

async fn issue<S: TokenStore>(verifier: &Verifier<S>, scopes: &[&str]) -> String {
    let new = NewToken::new("ci", Owner::new("team-1").expect("owner"))
        .scopes(scopes.iter().copied())
        .expect("scopes");
    let issued = verifier.issuer().issue(new).await.expect("issued");
    issued.token.expose_secret().to_owned()
}

impl Rig {
    async fn run(&self, token: &str, required: &ScopeRequirement) -> Result<Vec<Tag>, AuthError> {
        let verification = self.verifier.begin(RequestInfo::new(), &self.extra)?;
        let verified = self
            .verifier
            .finish(verification, &self.extra, token, required)
            .await?;
        // Every tag it kept, through `detail` of the only type attached.
        Ok(verified.detail::<Tag>().copied().into_iter().collect())
    }
}

/// What the split path must do with `steps`, by the claims of the change.
fn expected(steps: &[Step]) -> (Vec<Event>, Option<Tag>, bool) {
    let total = steps.len();
    let refused_at = steps.iter().position(|s| s.refuses());
    let asked = refused_at.map_or(total, |k| k + 1);
    let mut events: Vec<Event> = (0..asked).map(Event::Admit).collect();
    if let Some(k) = refused_at {
        for (i, step) in steps.iter().enumerate().take(k) {
            if step.spends() {
                events.push(Event::Refund(i, Some(Tag(i))));
            }
        }
    }
    let kind = refused_at.map(|_| AuthErrorKind::RateLimited);
    let accepted = refused_at.is_none();
    for i in 0..total {
        events.push(Event::Settle(i, accepted, true, kind));
    }
    for i in 0..total {
        events.push(Event::Observe(i, accepted, true, kind));
    }
    let first_detail = if accepted {
        steps.iter().position(|s| s.spends()).map(Tag)
    } else {
        None
    };
    (events, first_detail, accepted)
}

fn all_scripts(len: usize) -> Vec<Vec<Step>> {
    let mut out = vec![Vec::new()];
    for _ in 0..len {
        out = out
            .into_iter()
            .flat_map(|prefix| {
                STEPS.iter().map(move |step| {
                    let mut next = prefix.clone();
                    next.push(*step);
                    next
                })
            })
            .collect();
    }
    out
}

/// Runs every script of `len` policies on every split between own and extra; returns the
/// mismatches, described.
async fn sweep(len: usize) -> Vec<String> {
    let mut mismatches = Vec::new();
    for own in 0..=len {
        let rig = rig(own, len).await;
        for steps in all_scripts(len) {
            rig.script.set(&steps);
            let result = rig.run(&rig.token, &ScopeRequirement::none()).await;
            let log = rig.script.take();
            let (events, first_detail, accepted) = expected(&steps);
            let got_ok = result.is_ok();
            let mut problems = Vec::new();
            if got_ok != accepted {
                problems.push(format!("result ok={got_ok}, expected ok={accepted}"));
            }
            match &result {
                Ok(tags) => {
                    if tags.first().copied() != first_detail {
                        problems.push(format!("detail {tags:?}, expected {first_detail:?}"));
                    }
                }
                Err(error) => {
                    if error.kind() != AuthErrorKind::RateLimited
                        || error.retry_after() != Some(Duration::from_secs(7))
                    {
                        problems.push(format!("error {error:?}, expected the policy's own"));
                    }
                }
            }
            if log != events {
                problems.push(format!("events {log:?}, expected {events:?}"));
            }
            if !problems.is_empty() {
                mismatches.push(format!(
                    "own={own} steps={steps:?}: {}",
                    problems.join("; ")
                ));
            }
        }
    }
    mismatches
}

fn noop_poll<F: Future>(future: Pin<&mut F>) -> Poll<F::Output> {
    future.poll(&mut Context::from_waker(Waker::noop()))
}

// ---------------------------------------------------------------------------------------------
// Claims 1–4: every mix of Now and Later, spending or not, refusing anywhere
// ---------------------------------------------------------------------------------------------

/// Three policies, every one of the six answers each (216 scripts), on every split between the
/// verifier's own and `extra` (0..=3 own): admits once each in order up to the first refusal,
/// refunds exactly the earlier spenders with their own receipt, every observer and `Pending`
/// sees the one outcome once, and the first detail is the first spender's.
#[tokio::test]
async fn a1_every_mix_of_now_and_later_on_every_split() {
    let mismatches = sweep(3).await;
    assert!(
        mismatches.is_empty(),
        "{} mismatches, first: {:#?}",
        mismatches.len(),
        &mismatches[..mismatches.len().min(5)]
    );
}

/// Four policies (1296 scripts × 5 splits): the same, with refusals deeper in the chain and
/// more than one Later in a row before and after a Now.
#[tokio::test]
async fn a2_every_mix_of_four_policies_on_every_split() {
    let mismatches = sweep(4).await;
    assert!(
        mismatches.is_empty(),
        "{} mismatches, first: {:#?}",
        mismatches.len(),
        &mismatches[..mismatches.len().min(5)]
    );
}

/// With no policies at all nothing is observed and the request is accepted; with policies only
/// in `extra` (the verifier has none), they still run every step.
#[tokio::test]
async fn a3_no_policies_and_extra_only() {
    let none = rig(0, 0).await;
    none.script.set(&[]);
    let tags = none
        .run(&none.token, &ScopeRequirement::none())
        .await
        .expect("accepted");
    assert!(tags.is_empty());
    assert!(none.script.take().is_empty());

    let only_extra = rig(0, 1).await;
    only_extra.script.set(&[Step::LaterSpend]);
    let tags = only_extra
        .run(&only_extra.token, &ScopeRequirement::none())
        .await
        .expect("accepted");
    assert_eq!(tags, vec![Tag(0)]);
    assert_eq!(
        only_extra.script.take(),
        vec![
            Event::Admit(0),
            Event::Settle(0, true, true, None),
            Event::Observe(0, true, true, None),
        ]
    );
}

/// `detail::<T>` finds the first detail of type `T`, skipping earlier details of another type,
/// whether the `T` came from a Now or a Later answer.
#[tokio::test]
async fn a4_detail_of_a_type_skips_other_types() {
    struct Other(u32);
    impl Policy for Other {
        fn admit<'a>(&'a self, _: &'a Principal, _: &'a RequestInfo) -> Admit<'a> {
            let value = self.0;
            if value.is_multiple_of(2) {
                Admit::Now(Ok(Admitted::new().with_detail(value)))
            } else {
                Admit::Later(Box::pin(async move {
                    YieldOnce(false).await;
                    Ok(Admitted::new().with_detail(value))
                }))
            }
        }
    }
    for (first, second) in [
        (Step::NowSpend, Step::LaterSpend),
        (Step::LaterSpend, Step::NowSpend),
    ] {
        for other in [2_u32, 3] {
            let script = Arc::new(Script::default());
            let verifier = Verifier::builder(MemoryStore::new())
                .policy(Other(other))
                .build();
            let extra: Vec<Arc<dyn Policy>> = vec![
                Arc::new(Scripted {
                    index: 0,
                    script: Arc::clone(&script),
                }),
                Arc::new(Scripted {
                    index: 1,
                    script: Arc::clone(&script),
                }),
            ];
            let token = issue(&verifier, &[]).await;
            script.set(&[first, second]);
            let verification = verifier.begin(RequestInfo::new(), &extra).unwrap();
            let verified = verifier
                .finish(verification, &extra, &token, &ScopeRequirement::none())
                .await
                .expect("accepted");
            assert_eq!(verified.detail::<u32>(), Some(&other));
            assert_eq!(verified.detail::<Tag>(), Some(&Tag(0)));
            assert_eq!(verified.detail::<String>(), None);
            // The receipts hand back both spenders' tags to a later refund, in order.
            let (principal, receipts) = verified.into_parts();
            script.take();
            verifier
                .refund(&extra, &principal, &RequestInfo::new(), &receipts)
                .await;
            assert_eq!(
                script.take(),
                vec![
                    Event::Refund(0, Some(Tag(0))),
                    Event::Refund(1, Some(Tag(1)))
                ],
                "other={other} first={first:?}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Claim 5: a refusal before admit calls no admit
// ---------------------------------------------------------------------------------------------

/// Unknown token, wrong secret, insufficient scope, a policy's `on_record` refusal: no admit,
/// no refund; every observer and `Pending` sees the refusal once (with no principal: the
/// request was refused before one was accepted for admit).
#[tokio::test]
async fn a5_refusals_before_admit_call_no_admit() {
    let other = Verifier::builder(MemoryStore::new()).build();
    let unknown = issue(&other, &["vps:read"]).await;
    for own in 0..=2 {
        let rig = rig(own, 2).await;
        let wrong = {
            // One character of the secret (the token's last) changed.
            let mut chars: Vec<char> = rig.token.chars().collect();
            let last = chars.len() - 1;
            chars[last] = if chars[last] == 'a' { 'b' } else { 'a' };
            chars.into_iter().collect::<String>()
        };
        let write = ScopeRequirement::all(["vps:write"]).unwrap();
        let none = ScopeRequirement::none();
        let cases: [(&str, &str, &ScopeRequirement, Option<usize>); 5] = [
            ("unknown token", &unknown, &none, None),
            ("wrong secret", &wrong, &none, None),
            ("insufficient scope", &rig.token, &write, None),
            ("on_record refusal by 0", &rig.token, &none, Some(0)),
            ("on_record refusal by 1", &rig.token, &none, Some(1)),
        ];
        for (what, token, required, on_record) in cases {
            rig.script.set(&[Step::NowSpend, Step::LaterSpend]);
            *rig.script.refuse_on_record.lock().unwrap() = on_record;
            let error = rig.run(token, required).await.unwrap_err();
            let log = rig.script.take();
            assert!(
                !log.iter()
                    .any(|e| matches!(e, Event::Admit(_) | Event::Refund(..))),
                "own={own} {what}: {log:?}"
            );
            let kind = Some(error.kind());
            let mut expected = Vec::new();
            for i in 0..2 {
                expected.push(Event::Settle(i, false, false, kind));
            }
            for i in 0..2 {
                expected.push(Event::Observe(i, false, false, kind));
            }
            assert_eq!(log, expected, "own={own} {what}");
        }
        *rig.script.refuse_on_record.lock().unwrap() = None;
    }
}

/// A refusal by a policy's `before_lookup` calls no admit either.
#[tokio::test]
async fn a5_b_before_lookup_refusal_calls_no_admit() {
    let rig = rig(1, 2).await;
    rig.script.set(&[Step::NowSpend, Step::LaterSpend]);
    *rig.script.refuse_before.lock().unwrap() = Some(1);
    let error = rig
        .run(&rig.token, &ScopeRequirement::none())
        .await
        .unwrap_err();
    assert_eq!(error.kind(), AuthErrorKind::InvalidToken);
    let log = rig.script.take();
    assert!(
        !log.iter()
            .any(|e| matches!(e, Event::Admit(_) | Event::Refund(..))),
        "{log:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Claim 6: dropping `finish` while a Later admit waits
// ---------------------------------------------------------------------------------------------

/// Poll once with a noop waker while policy `k`'s Later never answers, then drop: no panic, no
/// refund, no observe, no settle; every `Pending` and the waiting future are dropped. Earlier
/// policies, Now or Later, spent (they keep it: nobody was refused).
#[tokio::test]
async fn a6_dropping_finish_while_a_later_admit_waits() {
    let prefixes: [&[Step]; 5] = [
        &[],
        &[Step::NowSpend],
        &[Step::LaterSpend],
        &[Step::NowSpend, Step::LaterOk],
        &[Step::LaterSpend, Step::NowSpend],
    ];
    for prefix in prefixes {
        let total = prefix.len() + 2;
        for own in 0..=total {
            let rig = rig(own, total).await;
            let mut steps = prefix.to_vec();
            steps.push(Step::LaterNever);
            steps.push(Step::NowSpend);
            rig.script.set(&steps);
            let waiting = prefix.len();
            let none = ScopeRequirement::none();
            let verification = rig.verifier.begin(RequestInfo::new(), &rig.extra).unwrap();
            let mut finish =
                Box::pin(
                    rig.verifier
                        .finish(verification, &rig.extra, &rig.token, &none),
                );
            // Poll until the never-answering admit was asked (the lookup and the Later answers
            // before it may each take a poll), bounded.
            let mut polls = 0;
            while !rig
                .script
                .log
                .lock()
                .unwrap()
                .contains(&Event::Admit(waiting))
            {
                assert!(noop_poll(finish.as_mut()).is_pending(), "steps={steps:?}");
                polls += 1;
                assert!(polls < 100, "admit {waiting} never asked: steps={steps:?}");
            }
            assert!(noop_poll(finish.as_mut()).is_pending());
            drop(finish);
            let log = rig.script.take();
            let admits: Vec<Event> = (0..=waiting).map(Event::Admit).collect();
            assert_eq!(
                log.iter()
                    .filter(|e| matches!(e, Event::Admit(_)))
                    .cloned()
                    .collect::<Vec<_>>(),
                admits,
                "own={own} steps={steps:?}"
            );
            assert!(
                !log.iter().any(|e| matches!(
                    e,
                    Event::Refund(..) | Event::Observe(..) | Event::Settle(..)
                )),
                "own={own} steps={steps:?}: {log:?}"
            );
            for i in 0..total {
                assert_eq!(
                    log.iter()
                        .filter(|e| **e == Event::PendingDropped(i))
                        .count(),
                    1,
                    "own={own} steps={steps:?}: {log:?}"
                );
            }
            assert_eq!(
                log.iter()
                    .filter(|e| matches!(e, Event::LaterDropped(_)))
                    .cloned()
                    .collect::<Vec<_>>(),
                vec![Event::LaterDropped(waiting)],
                "own={own} steps={steps:?}: {log:?}"
            );
        }
    }
}

/// Dropping `finish` while a refund (after a later refusal) waits: no panic, no observe, no
/// settle; each `Pending` dropped once.
#[tokio::test]
async fn a6_b_dropping_finish_while_a_refund_waits() {
    let rig = rig(1, 3).await;
    rig.script
        .set(&[Step::NowSpend, Step::LaterSpend, Step::NowRefuse]);
    let none = ScopeRequirement::none();
    let verification = rig.verifier.begin(RequestInfo::new(), &rig.extra).unwrap();
    let mut finish = Box::pin(
        rig.verifier
            .finish(verification, &rig.extra, &rig.token, &none),
    );
    let mut polls = 0;
    while !rig.script.log.lock().unwrap().contains(&Event::Admit(2)) {
        assert!(noop_poll(finish.as_mut()).is_pending());
        polls += 1;
        assert!(polls < 100);
    }
    // The first refund yields once: it is waiting now.
    drop(finish);
    let log = rig.script.take();
    assert!(
        !log.iter()
            .any(|e| matches!(e, Event::Observe(..) | Event::Settle(..))),
        "{log:?}"
    );
    for i in 0..3 {
        assert_eq!(
            log.iter()
                .filter(|e| **e == Event::PendingDropped(i))
                .count(),
            1,
            "{log:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Claims 1–3 under concurrency: many requests at once, each its own script
// ---------------------------------------------------------------------------------------------

/// A policy whose answer depends on the request (its client address names a script), for
/// concurrent requests; logs by request.
struct ByRequest {
    index: usize,
    log: Arc<Mutex<std::collections::HashMap<u8, Vec<Event>>>>,
    observed: Arc<Mutex<Vec<(usize, bool)>>>,
}

fn request_id(request: &RequestInfo) -> u8 {
    match request.client_ip {
        Some(std::net::IpAddr::V4(ip)) => ip.octets()[3],
        _ => panic!("no address"),
    }
}

fn script_of(id: u8, len: usize) -> Vec<Step> {
    let mut n = usize::from(id);
    let mut steps = Vec::new();
    for _ in 0..len {
        steps.push(STEPS[n % STEPS.len()]);
        n /= STEPS.len();
    }
    steps
}

impl ByRequest {
    fn push(&self, id: u8, event: Event) {
        self.log.lock().unwrap().entry(id).or_default().push(event);
    }
}

impl Policy for ByRequest {
    fn before_lookup(&self, request: &RequestInfo) -> Result<Pending, AuthError> {
        let id = request_id(request);
        let log = Arc::clone(&self.log);
        let index = self.index;
        Ok(Pending::on_outcome(move |outcome| {
            let (accepted, principal, kind) = facts(outcome);
            log.lock()
                .unwrap()
                .entry(id)
                .or_default()
                .push(Event::Settle(index, accepted, principal, kind));
        }))
    }

    fn admit<'a>(&'a self, _: &'a Principal, request: &'a RequestInfo) -> Admit<'a> {
        let id = request_id(request);
        self.push(id, Event::Admit(self.index));
        let step = script_of(id, 3)[self.index];
        let index = self.index;
        let answer = move || -> Result<Admitted, AuthError> {
            if step.refuses() {
                Err(refusal())
            } else if step.spends() {
                Ok(Admitted::new().with_detail(Tag(index)))
            } else {
                Ok(Admitted::new())
            }
        };
        match step {
            Step::NowOk | Step::NowSpend | Step::NowRefuse => Admit::Now(answer()),
            _ => Admit::Later(Box::pin(async move {
                tokio::time::sleep(Duration::from_micros(u64::from(id) % 7 * 50)).await;
                tokio::task::yield_now().await;
                answer()
            })),
        }
    }

    fn refund<'a>(
        &'a self,
        _: &'a Principal,
        request: &'a RequestInfo,
        receipt: &'a Admitted,
    ) -> Option<Pin<Box<dyn Future<Output = ()> + Send + 'a>>> {
        let tag = receipt.detail::<Tag>().copied();
        Some(Box::pin(async move {
            tokio::task::yield_now().await;
            self.push(request_id(request), Event::Refund(self.index, tag));
        }))
    }

    fn observe(&self, outcome: &Outcome<'_>) {
        self.observed
            .lock()
            .unwrap()
            .push((self.index, outcome.is_accepted()));
    }
}

/// 216 concurrent requests (every script of three policies, one per client address), one
/// verifier policy and two `extra`, on a multi-threaded runtime: per request, the admits,
/// refunds and settlements are exactly the sequential ones; the observers count each outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a7_concurrent_requests_each_get_their_own_admit_path() {
    let log = Arc::new(Mutex::new(std::collections::HashMap::new()));
    let observed = Arc::new(Mutex::new(Vec::new()));
    let make = |index| ByRequest {
        index,
        log: Arc::clone(&log),
        observed: Arc::clone(&observed),
    };
    let verifier = Verifier::builder(MemoryStore::new())
        .policy(make(0))
        .build();
    let extra: Arc<Vec<Arc<dyn Policy>>> = Arc::new(vec![Arc::new(make(1)), Arc::new(make(2))]);
    let token = Arc::new(issue(&verifier, &[]).await);
    let mut tasks = Vec::new();
    for id in 0..216_u8 {
        let verifier = verifier.clone();
        let extra = Arc::clone(&extra);
        let token = Arc::clone(&token);
        tasks.push(tokio::spawn(async move {
            let info = RequestInfo::new().client_ip(Some([192, 0, 2, id].into()));
            let verification = verifier.begin(info, &extra).unwrap();
            let result = verifier
                .finish(verification, &extra, &token, &ScopeRequirement::none())
                .await;
            (id, result.map(|v| v.detail::<Tag>().copied()))
        }));
    }
    let mut accepted = 0;
    for task in tasks {
        let (id, result) = task.await.expect("no panic");
        let steps = script_of(id, 3);
        let (mut events, first_detail, ok) = expected(&steps);
        // Observers are counted apart: they cannot tell requests apart.
        events.retain(|e| !matches!(e, Event::Observe(..)));
        assert_eq!(result.is_ok(), ok, "id={id} steps={steps:?}");
        if let Ok(detail) = result {
            accepted += 1;
            assert_eq!(detail, first_detail, "id={id} steps={steps:?}");
        }
        let got = log.lock().unwrap().remove(&id).unwrap_or_default();
        assert_eq!(got, events, "id={id} steps={steps:?}");
    }
    let observed = observed.lock().unwrap();
    for index in 0..3 {
        let of = |ok: bool| observed.iter().filter(|o| **o == (index, ok)).count();
        assert_eq!(of(true), accepted, "policy {index}");
        assert_eq!(of(false), 216 - accepted, "policy {index}");
    }
}

// ---------------------------------------------------------------------------------------------
// Audit and last use after the split: one event a request, last use only when accepted
// ---------------------------------------------------------------------------------------------

/// Every script of three policies (one the verifier's), with an audit sink: each request is
/// audited exactly once, `Accepted` iff admitted, else refused with the admit step's kind, the
/// error's token id, the record's owner and the client's address; last use is noted for accepted requests
/// only (one write at the next flush).
#[tokio::test]
async fn a8_audit_and_last_use_follow_the_admit_outcome() {
    let audited: Arc<Mutex<Vec<apitoken::AuditEvent>>> = Arc::default();
    let sink = Arc::clone(&audited);
    let script = Arc::new(Script::default());
    let verifier = Verifier::builder(MemoryStore::new())
        .audit(move |event: &apitoken::AuditEvent| sink.lock().unwrap().push(event.clone()))
        .policy(Scripted {
            index: 0,
            script: Arc::clone(&script),
        })
        .build();
    let extra: Vec<Arc<dyn Policy>> = (1..3)
        .map(|index| {
            Arc::new(Scripted {
                index,
                script: Arc::clone(&script),
            }) as Arc<dyn Policy>
        })
        .collect();
    let token = issue(&verifier, &[]).await;
    let id = verifier.inspect(&token).await.unwrap().unwrap().id;
    verifier.flush_last_used().await.unwrap();
    audited.lock().unwrap().clear();
    let address: std::net::IpAddr = [198, 51, 100, 9].into();
    for steps in all_scripts(3) {
        script.set(&steps);
        let (_, _, ok) = expected(&steps);
        let info = RequestInfo::new().client_ip(Some(address));
        let verification = verifier.begin(info, &extra).unwrap();
        let result = verifier
            .finish(verification, &extra, &token, &ScopeRequirement::none())
            .await;
        assert_eq!(result.is_ok(), ok, "steps={steps:?}");
        let events = std::mem::take(&mut *audited.lock().unwrap());
        assert_eq!(events.len(), 1, "steps={steps:?}: {events:?}");
        let event = &events[0];
        let outcome = if ok {
            apitoken::AuditOutcome::Accepted
        } else {
            apitoken::AuditOutcome::Refused {
                kind: AuthErrorKind::RateLimited,
                reason: None,
            }
        };
        assert_eq!(event.outcome, outcome, "steps={steps:?}");
        // A refusal's id is the one its error carries (the probe's carries none), as before
        // the change: `audit_refused` takes it from the error, the owner from the record.
        let token_id = if ok { Some(id) } else { None };
        assert_eq!(event.token_id, token_id, "steps={steps:?}");
        assert_eq!(
            event.owner.as_ref().map(Owner::as_str),
            Some("team-1"),
            "steps={steps:?}"
        );
        assert_eq!(event.client_ip, Some(address), "steps={steps:?}");
        let written = verifier.flush_last_used().await.unwrap();
        assert_eq!(written, usize::from(ok), "steps={steps:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// The authenticator path (no lookup, no await before the admit steps)
// ---------------------------------------------------------------------------------------------

/// `svc_key` stands for a record of its own; anything else `svc_` is a wrong secret.
struct ServiceKey;

impl apitoken::Authenticator for ServiceKey {
    fn recognises(&self, token: &str) -> bool {
        token.starts_with("svc_")
    }

    fn max_token_len(&self) -> usize {
        64
    }

    fn authenticate(
        &self,
        token: &str,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<apitoken::Authenticated, AuthError> {
        if token != "svc_key" {
            return Err(AuthError::invalid_token(RejectReason::WrongSecret, None));
        }
        Ok(apitoken::Authenticated::new(TokenRecord::new(
            apitoken::TokenId::new("svc").unwrap(),
            Owner::new("service:probe").unwrap(),
            "probe service",
            now,
        )))
    }
}

/// A token an authenticator recognises meets the same admit steps: every script of three
/// policies on every split, the same admits, refunds, settlements and observations; its wrong
/// secret calls no admit.
#[tokio::test]
async fn a9_authenticator_tokens_take_the_same_admit_path() {
    for own in 0..=3 {
        let script = Arc::new(Script::default());
        let mut builder = Verifier::builder(MemoryStore::new()).authenticator(ServiceKey);
        for index in 0..own {
            builder = builder.policy(Scripted {
                index,
                script: Arc::clone(&script),
            });
        }
        let rig = Rig {
            verifier: builder.build(),
            extra: (own..3)
                .map(|index| {
                    Arc::new(Scripted {
                        index,
                        script: Arc::clone(&script),
                    }) as Arc<dyn Policy>
                })
                .collect(),
            script,
            token: "svc_key".to_owned(),
        };
        for steps in all_scripts(3) {
            rig.script.set(&steps);
            let result = rig.run(&rig.token, &ScopeRequirement::none()).await;
            let (events, first_detail, ok) = expected(&steps);
            assert_eq!(result.is_ok(), ok, "own={own} steps={steps:?}");
            if let Ok(tags) = result {
                assert_eq!(tags.first().copied(), first_detail, "own={own} {steps:?}");
            }
            assert_eq!(rig.script.take(), events, "own={own} steps={steps:?}");
        }
        rig.script
            .set(&[Step::NowSpend, Step::LaterSpend, Step::NowOk]);
        let error = rig
            .run("svc_wrong", &ScopeRequirement::none())
            .await
            .unwrap_err();
        assert_eq!(error.reason(), Some(RejectReason::WrongSecret));
        let log = rig.script.take();
        assert!(
            !log.iter()
                .any(|e| matches!(e, Event::Admit(_) | Event::Refund(..))),
            "own={own}: {log:?}"
        );
    }
}
