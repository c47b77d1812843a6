//! Child-process nodes: each node is the current test binary re-run in the role
//! [`NODE_ROLE`] (see [`crate::crash`]), serving commands on its stdin and answering with
//! steps on its stdout, so a test can SIGKILL it at any point and start it again.
//!
//! The protocol, one line each way:
//! - parent to child (stdin): `<id> <verb> <field>...`; verbs `status`, `finalize
//!   <target|-> <none|trace|crash:<crash point>:<hit>>`, `call <operation> <argument>`,
//!   `prepare`, `cancel-prepare`, `stop`;
//! - child to parent (steps): `ready`, `start-failed <kind> <message>`, `reply <id> ok
//!   <field>...`, `reply <id> err <kind> <message>`, `fp <crash point>` (a crash point
//!   passed, its name a field), `crashpoint <crash point> <hit> <published MLV>` (the
//!   child then blocks until killed, and so does every thread of it that passes a crash
//!   point after that).
//!
//! Every field is `'` followed by the text, percent-encoded, so none is empty or holds a
//! space.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use layout_core::StartIntent;

use super::error::MiniClusterError;
use super::running::Running;
use super::values::{FinalizeRun, FinalizeSummary, NodeSpec, NodeStatus, RunOutcome};
use super::wire::{decode, encode, next_command, ParentCommand};
use super::StorageKind;
use crate::component::{PrepareOutcome, TestComponent};
use crate::crash::{block_until_killed, child_role, report_step, ChildCommand, ChildProcess};
use crate::inject::{Armed, CrashPoint, Injection};

/// The role of a child-process node.
pub const NODE_ROLE: &str = "layout-testkit-node";

/// A safety bound for a hung child, far above what any command needs; not a timing
/// assertion.
const BOUND: Duration = Duration::from_secs(120);

const ENV_TYPE: &str = "LAYOUT_TESTKIT_NODE_TYPE";
const ENV_NAME: &str = "LAYOUT_TESTKIT_NODE_NAME";
const ENV_KIND: &str = "LAYOUT_TESTKIT_NODE_KIND";
const ENV_INDEX: &str = "LAYOUT_TESTKIT_NODE_INDEX";
const ENV_DIR: &str = "LAYOUT_TESTKIT_NODE_DIR";
const ENV_INITIAL: &str = "LAYOUT_TESTKIT_NODE_INITIAL";
const ENV_OLD_SLV: &str = "LAYOUT_TESTKIT_NODE_OLD_SLV";
const ENV_NEW_SLV: &str = "LAYOUT_TESTKIT_NODE_NEW_SLV";
const ENV_SLV: &str = "LAYOUT_TESTKIT_NODE_SLV";
const ENV_INTENT: &str = "LAYOUT_TESTKIT_NODE_INTENT";
const ENV_PARAMS: &str = "LAYOUT_TESTKIT_NODE_PARAMS";
#[cfg(feature = "coordination")]
const ENV_MEMBER: &str = "LAYOUT_TESTKIT_NODE_MEMBER";

/// Serves as a child-process node of component type `C` when this process was started
/// as one, and returns `true` once told to stop (the test function should then return);
/// returns `false` at once otherwise (in the parent, or in a child of another role or
/// another component type).
///
/// Call it first thing in every test that builds a child-process
/// [`MiniCluster`](crate::MiniCluster), once per component type the cluster runs:
///
/// ```no_run
/// # use layout_testkit::{run_as_child_node, TestComponent};
/// # fn test<Kv: TestComponent, Om: TestComponent>() {
/// // In a #[test] function:
/// if run_as_child_node::<Kv>() || run_as_child_node::<Om>() {
///     return;
/// }
/// // ... the parent's half: build the cluster with .child_processes(test_name!()) ...
/// # }
/// ```
pub fn run_as_child_node<C: TestComponent>() -> bool {
    #[cfg(feature = "coordination")]
    if super::coordinated::run_as_child_coordinator::<C::Feature>(std::any::type_name::<C>()) {
        return true;
    }
    if child_role().as_deref() != Some(NODE_ROLE) {
        return false;
    }
    if std::env::var(ENV_TYPE).ok().as_deref() != Some(std::any::type_name::<C>()) {
        return false;
    }
    serve::<C>();
    true
}

/// Whether this process is a child-process node (of any component type).
pub(crate) fn is_node_process() -> bool {
    #[cfg(feature = "coordination")]
    if child_role().as_deref() == Some(super::coordinated::COORDINATOR_ROLE) {
        return true;
    }
    child_role().as_deref() == Some(NODE_ROLE)
}

fn intent_name(intent: StartIntent) -> &'static str {
    match intent {
        StartIntent::Init => "init",
        StartIntent::Upgrade => "upgrade",
        StartIntent::Downgrade => "downgrade",
        _ => "normal",
    }
}

fn intent_named(name: &str) -> StartIntent {
    match name {
        "init" => StartIntent::Init,
        "upgrade" => StartIntent::Upgrade,
        "downgrade" => StartIntent::Downgrade,
        _ => StartIntent::Normal,
    }
}

fn injection_field(injection: Injection) -> String {
    match injection {
        Injection::None => "none".to_owned(),
        Injection::Trace => "trace".to_owned(),
        Injection::Crash(p) => format!("crash:{}:{}", p.failpoint, p.hit),
    }
}

fn injection_named(text: &str) -> Option<Injection> {
    match text {
        "none" => Some(Injection::None),
        "trace" => Some(Injection::Trace),
        _ => {
            let rest = text.strip_prefix("crash:")?;
            let (failpoint, hit) = rest.rsplit_once(':')?;
            CrashPoint::new(failpoint, hit.parse().ok()?).map(Injection::Crash)
        }
    }
}

/// The parent's handle on a child-process node.
pub(crate) struct ChildNode {
    name: String,
    process: ChildProcess,
    /// The index of the next step to read.
    cursor: usize,
    next_id: u64,
}

/// What a child said that matters to the request in flight.
enum Event {
    Reply(Result<Vec<String>, MiniClusterError>),
    Pass(&'static str),
    Crash { point: CrashPoint, mlv: u32 },
}

impl ChildNode {
    /// Starts the node's process and waits until it is ready (or refused to start).
    pub(crate) fn spawn(
        spec: &NodeSpec,
        test: &str,
        type_name: &str,
        slv: u32,
        intent: StartIntent,
    ) -> Result<Self, MiniClusterError> {
        if spec.storage != StorageKind::File {
            return Err(MiniClusterError::InvalidConfig(
                "child-process nodes need StorageKind::File (the other kinds live in the test's own process)"
                    .to_owned(),
            ));
        }
        let params = spec
            .params
            .iter()
            .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
            .collect::<Vec<_>>()
            .join(" ");
        let command = ChildCommand::new(test, NODE_ROLE)
            .env(ENV_TYPE, type_name)
            .env(ENV_NAME, &spec.name)
            .env(ENV_KIND, &spec.kind)
            .env(ENV_INDEX, spec.index.to_string())
            .env(ENV_DIR, &spec.dir)
            .env(ENV_INITIAL, spec.initial.to_string())
            .env(ENV_OLD_SLV, spec.old_slv.to_string())
            .env(ENV_NEW_SLV, spec.new_slv.to_string())
            .env(ENV_SLV, slv.to_string())
            .env(ENV_INTENT, intent_name(intent))
            .env(ENV_PARAMS, params);
        #[cfg(feature = "coordination")]
        let command = match &spec.member {
            Some(link) => command.env(ENV_MEMBER, link.env()),
            None => command,
        };
        let child_error = |source| MiniClusterError::Child {
            node: spec.name.clone(),
            source: Box::new(source),
        };
        let mut process = command.spawn().map_err(child_error)?;
        // Steps the component reports while it starts (a member told to finalize as it
        // registers runs its actions at once) come before `ready`: not for the kit.
        let mut cursor = 0;
        let first = loop {
            let step = process.next_step(cursor, BOUND).map_err(child_error)?;
            cursor += 1;
            if step == "ready" || step.starts_with("start-failed ") {
                break step;
            }
        };
        let words: Vec<&str> = first.split(' ').collect();
        match words.as_slice() {
            ["ready"] => Ok(Self {
                name: spec.name.clone(),
                process,
                cursor,
                next_id: 1,
            }),
            ["start-failed", kind, message] => {
                let _ = process.wait(BOUND);
                Err(MiniClusterError::Remote {
                    node: spec.name.clone(),
                    operation: "start".to_owned(),
                    kind: (*kind).to_owned(),
                    message: decode(message).unwrap_or_else(|| (*message).to_owned()),
                })
            }
            _ => Err(MiniClusterError::Protocol {
                node: spec.name.clone(),
                answer: first,
            }),
        }
    }

    fn child_error(&self, source: crate::crash::CrashError) -> MiniClusterError {
        MiniClusterError::Child {
            node: self.name.clone(),
            source: Box::new(source),
        }
    }

    fn protocol(&self, answer: impl Into<String>) -> MiniClusterError {
        MiniClusterError::Protocol {
            node: self.name.clone(),
            answer: answer.into(),
        }
    }

    fn send(&mut self, verb: &str, fields: &[String]) -> Result<u64, MiniClusterError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut line = format!("{id} {verb}");
        for field in fields {
            line.push(' ');
            line.push_str(field);
        }
        self.process
            .send_line(&line)
            .map_err(|e| self.child_error(e))?;
        Ok(id)
    }

    fn next_event(&mut self, id: u64) -> Result<Event, MiniClusterError> {
        let reply = format!("reply {id} ");
        loop {
            let step = self
                .process
                .next_step(self.cursor, BOUND)
                .map_err(|e| self.child_error(e))?;
            self.cursor += 1;
            let words: Vec<&str> = step.split(' ').collect();
            if let Some(rest) = step.strip_prefix(&reply) {
                let fields: Vec<&str> = rest.split(' ').collect();
                return match fields.as_slice() {
                    ["ok", values @ ..] => values
                        .iter()
                        .map(|v| decode(v).ok_or_else(|| self.protocol(step.clone())))
                        .collect::<Result<Vec<_>, _>>()
                        .map(|v| Event::Reply(Ok(v))),
                    ["err", kind, message] => Ok(Event::Reply(Err(MiniClusterError::Remote {
                        node: self.name.clone(),
                        operation: String::new(),
                        kind: (*kind).to_owned(),
                        message: decode(message).unwrap_or_else(|| (*message).to_owned()),
                    }))),
                    _ => Err(self.protocol(step.clone())),
                };
            }
            match words.as_slice() {
                ["fp", name] => {
                    let point = decode(name).and_then(|name| CrashPoint::new(&name, 1));
                    return match point {
                        Some(point) => Ok(Event::Pass(point.failpoint)),
                        None => Err(self.protocol(step.clone())),
                    };
                }
                ["crashpoint", name, hit, mlv] => {
                    let point = decode(name)
                        .zip(hit.parse().ok())
                        .and_then(|(name, hit)| CrashPoint::new(&name, hit));
                    return match (point, mlv.parse()) {
                        (Some(point), Ok(mlv)) => Ok(Event::Crash { point, mlv }),
                        _ => Err(self.protocol(step.clone())),
                    };
                }
                // Anything else a component reports is not for the kit.
                _ => {}
            }
        }
    }

    /// Sends a request and waits for its reply (failpoint passes are not expected).
    fn request(
        &mut self,
        operation: &str,
        verb: &str,
        fields: &[String],
    ) -> Result<Vec<String>, MiniClusterError> {
        let id = self.send(verb, fields)?;
        loop {
            match self.next_event(id)? {
                Event::Reply(reply) => {
                    return reply.map_err(|e| match e {
                        MiniClusterError::Remote {
                            node,
                            kind,
                            message,
                            ..
                        } => MiniClusterError::Remote {
                            node,
                            operation: operation.to_owned(),
                            kind,
                            message,
                        },
                        other => other,
                    })
                }
                Event::Pass(_) => {}
                Event::Crash { .. } => return Err(self.protocol("an unexpected crash point")),
            }
        }
    }

    pub(crate) fn status(&mut self) -> Result<NodeStatus, MiniClusterError> {
        let fields = self.request("status", "status", &[])?;
        match fields.as_slice() {
            [mlv, slv, unfinalized] => Ok(NodeStatus {
                name: self.name.clone(),
                metadata_layout_version: mlv.parse().map_err(|_| self.protocol(mlv.clone()))?,
                software_layout_version: slv.parse().map_err(|_| self.protocol(slv.clone()))?,
                unfinalized: split_list(unfinalized),
            }),
            _ => Err(self.protocol(fields.join(" "))),
        }
    }

    pub(crate) fn call(
        &mut self,
        operation: &str,
        argument: &str,
    ) -> Result<String, MiniClusterError> {
        let fields = self.request(
            &format!("call {operation}"),
            "call",
            &[encode(operation), encode(argument)],
        )?;
        match fields.as_slice() {
            [result] => Ok(result.clone()),
            _ => Err(self.protocol(fields.join(" "))),
        }
    }

    pub(crate) fn prepare(&mut self) -> Result<PrepareOutcome, MiniClusterError> {
        let fields = self.request("prepare", "prepare", &[])?;
        match fields
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .as_slice()
        {
            ["unsupported"] => Ok(PrepareOutcome::Unsupported),
            ["prepared", "-"] => Ok(PrepareOutcome::Prepared { index: None }),
            ["prepared", index] => index
                .parse()
                .map(|i| PrepareOutcome::Prepared { index: Some(i) })
                .map_err(|_| self.protocol(fields.join(" "))),
            _ => Err(self.protocol(fields.join(" "))),
        }
    }

    pub(crate) fn cancel_prepare(&mut self) -> Result<(), MiniClusterError> {
        self.request("cancel_prepare", "cancel-prepare", &[])
            .map(drop)
    }

    /// Finalizes with an injection; on a crash point, SIGKILLs the child there.
    pub(crate) fn finalize(
        &mut self,
        target: Option<u32>,
        injection: Injection,
    ) -> Result<FinalizeRun, MiniClusterError> {
        let target_field = target.map_or_else(|| "-".to_owned(), |t| t.to_string());
        let id = self.send(
            "finalize",
            &[encode(&target_field), encode(&injection_field(injection))],
        )?;
        let mut trace = Vec::new();
        loop {
            match self.next_event(id)? {
                Event::Pass(name) => trace.push(name),
                Event::Crash { point, mlv } => {
                    self.process.kill().map_err(|e| self.child_error(e))?;
                    let output = self.process.wait(BOUND).map_err(|e| self.child_error(e))?;
                    if !output.was_killed() {
                        return Err(self.protocol(format!(
                            "the child was to be killed at {point}, but it ended with {}",
                            output.status
                        )));
                    }
                    return Ok(FinalizeRun {
                        outcome: RunOutcome::Crashed {
                            at: point,
                            published_mlv: mlv,
                        },
                        trace,
                    });
                }
                Event::Reply(Err(e)) => {
                    return Err(match e {
                        MiniClusterError::Remote { node, message, .. } => {
                            MiniClusterError::Finalize { node, message }
                        }
                        other => other,
                    })
                }
                Event::Reply(Ok(fields)) => {
                    return match fields.as_slice() {
                        [from, mlv, finalized] => Ok(FinalizeRun {
                            outcome: RunOutcome::Finalized(FinalizeSummary {
                                node: self.name.clone(),
                                from: from.parse().map_err(|_| self.protocol(from.clone()))?,
                                metadata_layout_version: mlv
                                    .parse()
                                    .map_err(|_| self.protocol(mlv.clone()))?,
                                finalized: split_list(finalized),
                            }),
                            trace,
                        }),
                        _ => Err(self.protocol(fields.join(" "))),
                    }
                }
            }
        }
    }

    /// Arms a crash at the member's next local finalization
    /// ([`MEMBER_FINALIZE_FAILPOINT`](super::coordinated::MEMBER_FINALIZE_FAILPOINT)).
    #[cfg(feature = "coordination")]
    pub(crate) fn arm_member_crash(&mut self) -> Result<(), MiniClusterError> {
        self.request("arm a member crash", "arm-member-crash", &[])
            .map(drop)
    }

    /// Waits until the child reported `step`.
    #[cfg(feature = "coordination")]
    pub(crate) fn wait_for_step(&mut self, step: &str) -> Result<(), MiniClusterError> {
        self.process
            .wait_for_step(step, BOUND)
            .map_err(|e| self.child_error(e))
    }

    /// The member's heartbeat errors so far.
    #[cfg(feature = "coordination")]
    pub(crate) fn member_errors(&mut self) -> Result<Vec<String>, MiniClusterError> {
        self.request("member errors", "member-errors", &[])
    }

    /// Asks the child to stop and waits for it to exit; kills it if it does not.
    pub(crate) fn stop(mut self) -> Result<(), MiniClusterError> {
        let stopped = self.request("stop", "stop", &[]);
        let output = self.process.wait(BOUND);
        stopped?;
        let output = output.map_err(|e| self.child_error(e))?;
        if output.success() {
            Ok(())
        } else {
            Err(self.protocol(format!(
                "the child did not exit cleanly when stopped: {}",
                output.status
            )))
        }
    }

    /// SIGKILLs the child and reaps it.
    pub(crate) fn kill(mut self) -> Result<(), MiniClusterError> {
        self.process.kill().map_err(|e| self.child_error(e))?;
        self.process
            .wait(BOUND)
            .map(drop)
            .map_err(|e| self.child_error(e))
    }
}

fn split_list(field: &str) -> Vec<String> {
    if field.is_empty() {
        Vec::new()
    } else {
        field.split(',').map(str::to_owned).collect()
    }
}

fn env_var(name: &str) -> Result<String, String> {
    std::env::var(name).map_err(|_| format!("the environment variable {name} is not set"))
}

fn env_number<T: std::str::FromStr>(name: &str) -> Result<T, String> {
    let text = env_var(name)?;
    text.parse()
        .map_err(|_| format!("{name}={text} is not a number"))
}

/// The node's spec, SLV and intent, from the environment the parent set.
fn spec_from_env() -> Result<(NodeSpec, u32, StartIntent), String> {
    let mut params = BTreeMap::new();
    for pair in env_var(ENV_PARAMS)?.split(' ').filter(|p| !p.is_empty()) {
        let parsed = pair
            .split_once('=')
            .and_then(|(k, v)| Some((decode(k)?, decode(v)?)));
        let (k, v) = parsed.ok_or_else(|| format!("bad parameter {pair:?} in {ENV_PARAMS}"))?;
        params.insert(k, v);
    }
    let spec = NodeSpec {
        name: env_var(ENV_NAME)?,
        kind: env_var(ENV_KIND)?,
        index: env_number(ENV_INDEX)?,
        dir: PathBuf::from(env_var(ENV_DIR)?),
        initial: env_number(ENV_INITIAL)?,
        old_slv: env_number(ENV_OLD_SLV)?,
        new_slv: env_number(ENV_NEW_SLV)?,
        params,
        storage: StorageKind::File,
        child_test: None,
        #[cfg(feature = "coordination")]
        member: match std::env::var(ENV_MEMBER) {
            Ok(text) => Some(
                super::values::MemberLink::from_env(&text)
                    .ok_or_else(|| format!("bad member link {text:?} in {ENV_MEMBER}"))?,
            ),
            Err(_) => None,
        },
    };
    Ok((
        spec,
        env_number(ENV_SLV)?,
        intent_named(&env_var(ENV_INTENT)?),
    ))
}

fn reply(id: &str, result: Result<Vec<String>, MiniClusterError>) {
    match result {
        Ok(fields) => {
            let fields: Vec<String> = fields.iter().map(|f| encode(f)).collect();
            report_step(format!("reply {id} ok {}", fields.join(" ")).trim_end());
        }
        Err(e) => report_step(format!(
            "reply {id} err {} {}",
            e.kind_name(),
            encode(&e.to_string())
        )),
    }
}

/// The child's half: start the node, then serve commands until told to stop.
fn serve<C: TestComponent>() {
    let started = spec_from_env()
        .map_err(MiniClusterError::InvalidConfig)
        .and_then(|(spec, slv, intent)| {
            Running::<C>::open(&spec, slv, intent, None).map(|running| (spec, running))
        });
    let (spec, running) = match started {
        Ok(started) => started,
        Err(e) => {
            report_step(format!(
                "start-failed {} {}",
                e.kind_name(),
                encode(&e.to_string())
            ));
            return;
        }
    };
    report_step("ready");
    let name = spec.name.as_str();
    loop {
        let ParentCommand {
            id,
            word,
            args,
            line,
        } = next_command();
        let id = id.as_str();
        let result = match word.as_deref() {
            Some("status") => {
                let status = running.status(name);
                Ok(vec![
                    status.metadata_layout_version.to_string(),
                    status.software_layout_version.to_string(),
                    status.unfinalized.join(","),
                ])
            }
            Some("finalize") => finalize_in_child(&running, name, &args),
            Some("call") => match args.as_slice() {
                [operation, argument] => running.call(name, operation, argument).map(|r| vec![r]),
                _ => Err(MiniClusterError::Protocol {
                    node: name.to_owned(),
                    answer: line.clone(),
                }),
            },
            Some("prepare") => running.prepare(name).map(|outcome| match outcome {
                PrepareOutcome::Unsupported => vec!["unsupported".to_owned()],
                PrepareOutcome::Prepared { index } => vec![
                    "prepared".to_owned(),
                    index.map_or_else(|| "-".to_owned(), |i| i.to_string()),
                ],
            }),
            Some("cancel-prepare") => running.cancel_prepare(name).map(|()| Vec::new()),
            #[cfg(feature = "coordination")]
            Some("arm-member-crash") => arm_member_crash(name),
            #[cfg(feature = "coordination")]
            Some("member-errors") => Ok(running
                .member
                .as_ref()
                .map(|m| m.errors())
                .unwrap_or_default()),
            Some("stop") => {
                reply(id, Ok(Vec::new()));
                return;
            }
            _ => Err(MiniClusterError::Protocol {
                node: name.to_owned(),
                answer: line.clone(),
            }),
        };
        reply(id, result);
    }
}

fn finalize_in_child<C: TestComponent>(
    running: &Running<C>,
    name: &str,
    args: &[String],
) -> Result<Vec<String>, MiniClusterError> {
    let protocol = || MiniClusterError::Protocol {
        node: name.to_owned(),
        answer: args.join(" "),
    };
    let [target, injection] = args else {
        return Err(protocol());
    };
    let target = match target.as_str() {
        "-" => None,
        t => Some(t.parse().map_err(|_| protocol())?),
    };
    let injection = injection_named(injection).ok_or_else(protocol)?;
    let lvm = Arc::clone(&running.lvm);
    let armed = Armed::arm(
        injection,
        |name| report_step(format!("fp {}", encode(name))),
        move |point, first| {
            if first {
                report_step(format!(
                    "crashpoint {} {} {}",
                    encode(point.failpoint),
                    point.hit,
                    lvm.metadata_layout_version()
                ));
            }
            block_until_killed();
        },
    )
    .map_err(|what| MiniClusterError::Unsupported {
        node: name.to_owned(),
        what,
    })?;
    let summary = running.finalize(name, target);
    drop(armed);
    let summary = summary?;
    Ok(vec![
        summary.from.to_string(),
        summary.metadata_layout_version.to_string(),
        summary.finalized.join(","),
    ])
}

/// Arms the member's crash point in this child: the next local finalization reports
/// `member-crashpoint` at its first failpoint and blocks until killed.
#[cfg(feature = "coordination")]
fn arm_member_crash(name: &str) -> Result<Vec<String>, MiniClusterError> {
    let unsupported = |what: String| MiniClusterError::Unsupported {
        node: name.to_owned(),
        what,
    };
    if !crate::inject::failpoints_enabled() {
        return Err(unsupported(
            "crash injection needs the failpoints compiled in: enable layout-testkit's \
             `failpoints` feature"
                .to_owned(),
        ));
    }
    fail::cfg_callback(super::coordinated::MEMBER_FINALIZE_FAILPOINT, || {
        report_step("member-crashpoint");
        block_until_killed();
    })
    .map_err(|e| unsupported(format!("could not arm the member's crash point: {e}")))?;
    Ok(Vec::new())
}
