//! The remediation core: while a rule with a plan fails on a device, walk
//! the plan's steps, issue each step's command, send unanswered ones again
//! within limits, and end the plan when a fresh report passes the rule
//! (`remediated`) or mark it `escalated` when the steps run out.
//!
//! Sans-IO, like the compliance engine that feeds it: the compliance task
//! hands it verdict changes ([`Remediation::handle_change`]), the devices'
//! reports ([`Remediation::handle_report`]) and acknowledgements
//! ([`Remediation::handle_ack`]), and time ([`Remediation::handle_timeout`]),
//! and takes out commands to publish ([`Remediation::poll_transmit`]),
//! events ([`Remediation::poll_event`]) and its next deadline
//! ([`Remediation::poll_timeout`]).
//!
//! **Level-triggered.** Nothing here is persisted: a plan is a function of
//! the failing rule, when it began failing (journaled with the device) and
//! the clock. After a restart [`Remediation::seed`] rebuilds every plan from
//! the table; steps already due then are not sent again (the previous
//! process sent them, or the device was away), later ones run on time.
//!
//! **Away devices.** A command unanswered after the plan's `max_attempts`
//! sends marks its device away: its next steps wait, and when it is heard
//! from again only the latest step due is sent (the earlier ones are
//! skipped), so a device back from a week offline gets one command, not a
//! week of them.

pub mod command;
#[cfg(test)]
#[allow(clippy::disallowed_methods)] // a simulated clock starts somewhere
mod tests;

pub use command::{Ack, AckRefusal, Command, Status, parse_ack};

use crate::compliance::Change;
use crate::policy::{Enforcement, Failure, Plan, Policy};
use crate::telemetry::UnixMillis;
use serde::Serialize;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where a command stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Sent, no answer yet.
    Sent,
    /// The device has it.
    Accepted,
    Done,
    Failed,
    /// Its `expires` passed before it was done.
    Expired,
    /// No answer after the plan's `max_attempts` sends: the device is away.
    Unanswered,
    /// Superseded by a later step while the device was away.
    Skipped,
}

impl State {
    pub fn label(self) -> &'static str {
        match self {
            Self::Sent => "sent",
            Self::Accepted => "accepted",
            Self::Done => "done",
            Self::Failed => "failed",
            Self::Expired => "expired",
            Self::Unanswered => "unanswered",
            Self::Skipped => "skipped",
        }
    }

    /// Nothing more will happen to it.
    pub fn is_final(self) -> bool {
        !matches!(self, Self::Sent | Self::Accepted)
    }
}

/// One command of a plan.
#[derive(Clone, Debug)]
pub struct Issued {
    /// Unique within this process (the id on the wire adds its prefix).
    pub id: u64,
    /// Index into the plan's steps.
    pub step: u8,
    pub issued: UnixMillis,
    pub expires: UnixMillis,
    pub attempts: u8,
    pub state: State,
    pub reason: Option<Box<str>>,
    /// When to send it again (while `Sent`).
    resend_at: Option<Instant>,
    expires_at: Instant,
}

/// A plan running for one failing rule of one device.
#[derive(Clone, Debug)]
pub struct Active {
    pub policy: Arc<Policy>,
    pub rule: u16,
    pub plan: Arc<Plan>,
    /// When the rule began failing (wall clock): the steps count from here.
    pub since: UnixMillis,
    /// The same moment on the monotonic clock.
    start: Instant,
    /// The next step not yet run.
    pub next_step: usize,
    pub commands: Vec<Issued>,
    pub escalated: bool,
    /// After its last step, the plan escalates if the rule still fails by then.
    verify_by: Option<Instant>,
}

impl Active {
    fn new(f: &Failure, plan: Arc<Plan>, now: Instant, wall: UnixMillis) -> Self {
        Self {
            policy: Arc::clone(&f.policy),
            rule: f.rule,
            plan,
            since: f.since,
            start: before(now, wall, f.since),
            next_step: 0,
            commands: Vec::new(),
            escalated: false,
            verify_by: None,
        }
    }

    fn is(&self, f: &Failure) -> bool {
        self.policy.name == f.policy.name && self.policy.rules[usize::from(self.rule)].id == f.rule().id
    }

    fn due(&self, step: usize) -> Instant {
        self.start + self.plan.steps[step].after
    }

    /// `policy/rule`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.policy.name, self.policy.rules[usize::from(self.rule)].id)
    }

    /// The command a step sends (`fix`: the rule's own).
    pub fn action(&self, step: usize) -> Arc<str> {
        let s = &self.plan.steps[step];
        match (s.action.as_str(), &self.policy.rules[usize::from(self.rule)].remediation) {
            (crate::policy::plan::FIX, Some(fix)) => fix.as_str().into(),
            (a, _) => a.into(),
        }
    }

    /// When this plan next needs a look. An away device's sends again and
    /// device steps wait for it to be heard from; expiries and `escalate`
    /// steps do not.
    fn wake(&self, away: bool) -> Option<Instant> {
        let steps = self.next_step..self.plan.steps.len();
        let step = if !away {
            steps.clone().next().map(|j| self.due(j))
        } else if self.escalated {
            None
        } else {
            let last = self.plan.steps.len() - 1;
            steps.filter(|j| self.plan.steps[*j].escalates() || *j == last).map(|j| self.due(j)).next()
        };
        let live = self.commands.iter().filter(|c| !c.state.is_final());
        let commands = live.flat_map(|c| [c.resend_at.filter(|_| !away), Some(c.expires_at)]);
        step.into_iter().chain(commands.flatten()).chain(self.verify_by.filter(|_| !self.escalated)).min()
    }
}

/// `at` on the wall clock as a monotonic instant, given that `now` is `wall`.
fn before(now: Instant, wall: UnixMillis, at: UnixMillis) -> Instant {
    let back = Duration::from_millis(u64::try_from(wall.saturating_sub(at)).unwrap_or(0));
    now.checked_sub(back).unwrap_or(now)
}

/// `at` as wall-clock milliseconds, given that `now` is `wall`.
fn wall_of(now: Instant, wall: UnixMillis, at: Instant) -> UnixMillis {
    let ahead = at.saturating_duration_since(now).as_millis();
    wall.saturating_add(i64::try_from(ahead).unwrap_or(i64::MAX))
}

#[derive(Debug, Default)]
struct DeviceState {
    away: bool,
    /// Its entry in the timer set.
    wake: Option<Instant>,
    plans: Vec<Active>,
}

/// What happened, for logs, metrics and the API.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A command was sent (`attempt` > 1: again).
    Sent { device: Arc<str>, action: Arc<str>, key: String, attempt: u8 },
    /// A command reached a final state, or was accepted.
    Command { device: Arc<str>, action: Arc<str>, key: String, state: State },
    /// A fresh report passed the rule: the plan is over.
    Remediated { device: Arc<str>, key: String, took: Duration, escalated: bool },
    /// The steps ran out, or an `escalate` step ran, and the rule still fails.
    Escalated { device: Arc<str>, key: String },
    /// The rule no longer fails for another reason than a passing report
    /// (the policy changed, the device went stale or was forgotten).
    Stopped { device: Arc<str>, key: String },
}

/// The remediation core.
pub struct Remediation {
    devices: HashMap<Arc<str>, DeviceState, foldhash::fast::RandomState>,
    timers: BTreeSet<(Instant, Arc<str>)>,
    transmits: VecDeque<Command>,
    events: VecDeque<Event>,
    /// Prefix of every command id on the wire: tells this process's
    /// commands from an earlier one's.
    prefix: String,
    next_id: u64,
    /// Devices whose plans changed since the last [`Remediation::take_touched`].
    touched: Vec<Arc<str>>,
}

impl Remediation {
    /// `seed` makes the command ids of this process (the shell gives a
    /// random one).
    pub fn new(seed: u32) -> Self {
        Self {
            devices: HashMap::default(),
            timers: BTreeSet::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            prefix: format!("{seed:08x}"),
            next_id: 1,
            touched: Vec::new(),
        }
    }

    /// The plans a failure starts: enforced policies' rules with a plan.
    fn plan_of(f: &Failure) -> Option<Arc<Plan>> {
        if f.policy.enforcement == Enforcement::Monitor {
            return None; // recorded and reported, never acted on
        }
        f.rule().resolved_plan.clone()
    }

    /// A device's verdict, failures or enforcement changed.
    pub fn handle_change(&mut self, change: &Change, now: Instant, wall: UnixMillis) {
        let wanted: Vec<(&Failure, Arc<Plan>)> =
            change.failures.iter().filter_map(|f| Some((f, Self::plan_of(f)?))).collect();
        if wanted.is_empty() && !self.devices.contains_key(&change.device) {
            return;
        }
        let passing_report = change.cause == crate::compliance::Cause::Telemetry;
        let state = self.devices.entry(Arc::clone(&change.device)).or_default();
        let mut ended = Vec::new();
        state.plans.retain(|a| {
            let keep = wanted.iter().any(|(f, _)| a.is(f));
            if !keep {
                ended.push((a.key(), a.since, a.escalated));
            }
            keep
        });
        for (key, since, escalated) in ended {
            let device = Arc::clone(&change.device);
            self.events.push_back(if passing_report {
                let took = Duration::from_millis(u64::try_from(wall.saturating_sub(since)).unwrap_or(0));
                Event::Remediated { device, key, took, escalated }
            } else {
                Event::Stopped { device, key }
            });
        }
        for (f, plan) in wanted {
            match state.plans.iter_mut().find(|a| a.is(f)) {
                // A reload may have changed the policy or the plan: the
                // progress (by step index) stays.
                Some(a) => {
                    a.policy = Arc::clone(&f.policy);
                    a.rule = f.rule;
                    a.plan = plan;
                    a.next_step = a.next_step.min(a.plan.steps.len());
                }
                None => state.plans.push(Active::new(f, plan, now, wall)),
            }
        }
        self.run(&change.device, now, wall);
    }

    /// After a restart: the plans of a device as the table has it, with the
    /// steps due before now counted as run.
    pub fn seed(&mut self, device: &Arc<str>, failures: &[Failure], now: Instant, wall: UnixMillis) {
        let mut plans = Vec::new();
        for f in failures {
            let Some(plan) = Self::plan_of(f) else { continue };
            let mut a = Active::new(f, plan, now, wall);
            while a.next_step < a.plan.steps.len() && a.due(a.next_step) <= now {
                a.escalated |= a.plan.steps[a.next_step].escalates();
                a.next_step += 1;
            }
            if a.next_step == a.plan.steps.len() && !a.escalated {
                let last = a.due(a.next_step - 1);
                a.verify_by = Some(last + a.plan.retry_every);
            }
            plans.push(a);
        }
        if plans.is_empty() {
            return;
        }
        self.devices.insert(Arc::clone(device), DeviceState { away: false, wake: None, plans });
        self.run(device, now, wall);
    }

    /// A report from `device` was accepted: it is reachable. A device that
    /// was away gets the latest step due (and nothing older).
    pub fn handle_report(&mut self, device: &str, now: Instant, wall: UnixMillis) {
        let Some(state) = self.devices.get_mut(device) else { return };
        if !state.away {
            return;
        }
        state.away = false;
        for a in &mut state.plans {
            // Nothing newer due: the last unanswered command goes once more.
            let newer_due = a.next_step < a.plan.steps.len() && a.due(a.next_step) <= now;
            if !newer_due
                && let Some(c) = a.commands.last_mut()
                && c.state == State::Unanswered
                && c.expires_at > now
            {
                c.state = State::Sent;
                c.attempts = 0;
                c.resend_at = Some(now);
            }
        }
        let id = self.devices.get_key_value(device).map(|(k, _)| Arc::clone(k));
        if let Some(id) = id {
            self.run(&id, now, wall);
        }
    }

    /// A device's acknowledgement of one of its commands.
    pub fn handle_ack(&mut self, device: &str, ack: &Ack, now: Instant, wall: UnixMillis) -> Result<(), AckRefusal> {
        let id = ack
            .id
            .strip_prefix(self.prefix.as_str())
            .and_then(|rest| rest.strip_prefix('-'))
            .and_then(|n| n.parse::<u64>().ok())
            .ok_or(AckRefusal::Unknown)?;
        let (device, state) = self.devices.get_key_value(device).ok_or(AckRefusal::Unknown)?;
        let device = Arc::clone(device);
        let found =
            state.plans.iter().enumerate().find_map(|(ai, a)| Some((ai, a.commands.iter().position(|c| c.id == id)?)));
        let (ai, ci) = found.ok_or(AckRefusal::Unknown)?;
        let Some(state) = self.devices.get_mut(&device) else { return Err(AckRefusal::Unknown) };
        state.away = false;
        let a = &mut state.plans[ai];
        let (action, key) = (a.action(usize::from(a.commands[ci].step)), a.key());
        let c = &mut a.commands[ci];
        let repeat = matches!(c.state, State::Done | State::Failed | State::Skipped)
            || (c.state == State::Accepted && ack.status == Status::Accepted);
        if repeat {
            return Ok(()); // an answer already taken, sent again
        }
        // A late answer to an expired or unanswered command still counts:
        // the device did act.
        c.state = match ack.status {
            Status::Accepted => State::Accepted,
            Status::Done => State::Done,
            Status::Failed => State::Failed,
        };
        c.reason = ack.reason.as_deref().map(Into::into);
        c.resend_at = None;
        self.events.push_back(Event::Command { device: Arc::clone(&device), action, key, state: c.state });
        self.run(&device, now, wall);
        Ok(())
    }

    /// The device left the table: its plans stop.
    pub fn forget(&mut self, device: &str) {
        let Some((device, state)) = self.devices.remove_entry(device) else { return };
        if let Some(at) = state.wake {
            self.timers.remove(&(at, Arc::clone(&device)));
        }
        for a in &state.plans {
            self.events.push_back(Event::Stopped { device: Arc::clone(&device), key: a.key() });
        }
        self.touched.push(device);
    }

    /// Runs what is due by `now`.
    pub fn handle_timeout(&mut self, now: Instant, wall: UnixMillis) {
        while let Some((at, _)) = self.timers.first()
            && *at <= now
        {
            let Some((_, device)) = self.timers.pop_first() else { break };
            if let Some(s) = self.devices.get_mut(&device) {
                s.wake = None;
            }
            self.run(&device, now, wall);
        }
    }

    /// When [`Remediation::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.first().map(|(at, _)| *at)
    }

    /// The next command to publish.
    pub fn poll_transmit(&mut self) -> Option<Command> {
        self.transmits.pop_front()
    }

    /// The next thing that happened.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Devices whose plans changed since the last call (for the API's view).
    pub fn take_touched(&mut self) -> Vec<Arc<str>> {
        std::mem::take(&mut self.touched)
    }

    /// A device's running plans.
    pub fn plans(&self, device: &str) -> &[Active] {
        self.devices.get(device).map_or(&[], |s| &s.plans)
    }

    /// Whether the device is away (a command went unanswered).
    pub fn away(&self, device: &str) -> bool {
        self.devices.get(device).is_some_and(|s| s.away)
    }

    /// Devices with a running plan.
    pub fn len(&self) -> usize {
        self.devices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    /// The id on the wire of command `id`.
    pub fn wire_id(&self, id: u64) -> String {
        format!("{}-{id}", self.prefix)
    }

    /// Brings one device's plans up to `now`, then re-arms its timer.
    fn run(&mut self, device: &Arc<str>, now: Instant, wall: UnixMillis) {
        self.touched.push(Arc::clone(device));
        let Self { devices, timers, transmits, events, prefix, next_id, .. } = self;
        let Some(state) = devices.get_mut(device) else { return };
        if let Some(at) = state.wake.take() {
            timers.remove(&(at, Arc::clone(device)));
        }
        let mut out = Out { device, transmits, events, prefix, next_id, now, wall };
        for a in &mut state.plans {
            out.advance(a, &mut state.away);
        }
        if state.plans.is_empty() {
            devices.remove(device);
            return;
        }
        state.wake = state.plans.iter().filter_map(|a| a.wake(state.away)).min();
        if let Some(at) = state.wake {
            timers.insert((at, Arc::clone(device)));
        }
    }
}

/// Where [`Remediation::run`] puts what it does.
struct Out<'a> {
    device: &'a Arc<str>,
    transmits: &'a mut VecDeque<Command>,
    events: &'a mut VecDeque<Event>,
    prefix: &'a str,
    next_id: &'a mut u64,
    now: Instant,
    wall: UnixMillis,
}

impl Out<'_> {
    /// One plan up to now: expiries and sends again, then due steps, then
    /// escalation once the steps ran out.
    fn advance(&mut self, a: &mut Active, away: &mut bool) {
        let (now, key) = (self.now, a.key());
        for ci in 0..a.commands.len() {
            let action = a.action(usize::from(a.commands[ci].step));
            let c = &mut a.commands[ci];
            if c.state.is_final() {
                continue;
            }
            if c.expires_at <= now {
                c.state = State::Expired;
                c.resend_at = None;
                self.command(action, &key, c.state);
            } else if c.state == State::Sent && c.resend_at.is_some_and(|t| t <= now) && !*away {
                if c.attempts >= a.plan.max_attempts {
                    c.state = State::Unanswered;
                    c.resend_at = None;
                    *away = true;
                    self.command(action, &key, c.state);
                } else {
                    c.attempts += 1;
                    c.resend_at = Some(now + a.plan.retry_every);
                    let c = a.commands[ci].clone();
                    self.send(a, &c, action);
                }
            }
        }
        let steps = a.plan.steps.len();
        while a.next_step < steps && a.due(a.next_step) <= now {
            let step = a.next_step;
            if a.plan.steps[step].escalates() {
                a.next_step += 1;
                self.escalate(a, &key);
                continue;
            }
            if *away {
                // Device steps wait until it is heard from again; an
                // `escalate` due meanwhile does not, and neither does the
                // end of the plan: an away device still failing when its
                // last step comes due is escalated.
                let escalate_due = (step..steps).any(|j| a.due(j) <= now && a.plan.steps[j].escalates());
                if escalate_due || a.due(steps - 1) <= now {
                    self.escalate(a, &key);
                }
                break;
            }
            a.next_step += 1;
            let superseded = (step + 1..steps).any(|j| a.due(j) <= now && !a.plan.steps[j].escalates());
            let id = *self.next_id;
            *self.next_id += 1;
            let expires_at = now + a.plan.expires;
            let mut c = Issued {
                id,
                step: u8::try_from(step).unwrap_or(u8::MAX),
                issued: self.wall,
                expires: wall_of(now, self.wall, expires_at),
                attempts: 1,
                state: State::Sent,
                reason: None,
                resend_at: Some(now + a.plan.retry_every),
                expires_at,
            };
            let action = a.action(step);
            if superseded {
                c.state = State::Skipped;
                c.attempts = 0;
                c.resend_at = None;
                self.command(action, &key, c.state);
            } else {
                self.send(a, &c, action);
            }
            a.commands.push(c);
        }
        if !a.escalated && a.next_step == steps {
            if a.verify_by.is_none() && a.commands.iter().all(|c| c.state.is_final()) {
                // The device has `retry_every` after its last command to
                // send a report that passes.
                a.verify_by = Some(now + a.plan.retry_every);
            }
            if a.verify_by.is_some_and(|t| t <= now) {
                self.escalate(a, &key);
            }
        }
    }

    fn command(&mut self, action: Arc<str>, key: &str, state: State) {
        self.event(Event::Command { device: Arc::clone(self.device), action, key: key.to_string(), state });
    }

    fn escalate(&mut self, a: &mut Active, key: &str) {
        if !a.escalated {
            a.escalated = true;
            self.event(Event::Escalated { device: Arc::clone(self.device), key: key.to_string() });
        }
    }

    fn send(&mut self, a: &Active, c: &Issued, action: Arc<str>) {
        let rule = &a.policy.rules[usize::from(a.rule)];
        self.transmits.push_back(Command {
            device: Arc::clone(self.device),
            id: format!("{}-{}", self.prefix, c.id),
            action: Arc::clone(&action),
            args: a.plan.steps[usize::from(c.step)].args.clone(),
            policy: a.policy.name.as_str().into(),
            rule: rule.id.as_str().into(),
            issued: c.issued,
            expires: c.expires,
            attempt: c.attempts,
        });
        self.event(Event::Sent { device: Arc::clone(self.device), action, key: a.key(), attempt: c.attempts });
    }

    fn event(&mut self, e: Event) {
        self.events.push_back(e);
    }
}
