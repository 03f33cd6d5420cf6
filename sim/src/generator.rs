//! Realistic alerts_v2 objects in Microsoft's shape, cheap enough for a 200,000-alert backlog.
//!
//! A generated alert is stored as a few bytes of metadata ([`GenMeta`]: a seed plus the values a
//! `$filter` can ask about) and rendered to JSON text from that seed each time it is listed, so a
//! large backlog costs little memory and a page of 1,000 renders in a few milliseconds. The text
//! is written directly (no `serde_json::Value` tree in between); only alerts that a test inserts or
//! patches are kept as explicit JSON (see `alerts.rs`).
//!
//! Templates follow Microsoft's examples (`graph-alert-get.json`) and the v1.0 schema: every
//! top-level property, and evidence drawn from eleven evidence types, 3–9 KB per alert.

use std::fmt::{Display, Write};
use std::time::Duration;

use fastrand::Rng;

use crate::alerts::{CLASSIFICATION, DETERMINATION, SERVICE_SOURCE, SEVERITY, STATUS};
use crate::time::{self, TICKS_PER_SEC};
use crate::Simulator;

/// What is kept per generated alert; everything else is derived from `seed` when rendered.
#[derive(Clone, Copy, Debug)]
pub(crate) struct GenMeta {
    pub seed: u64,
    pub created: i64,
    /// Indices into the enum member tables in `alerts.rs`.
    pub service: u8,
    pub severity: u8,
    pub status: u8,
    pub classification: u8,
    pub determination: u8,
    /// 0 = unassigned, else 1 + index into [`ASSIGNEES`].
    pub assignee: u8,
    /// The `incidentId` (kept here so incidents can find their alerts without rendering).
    pub incident: u32,
}

/// Who generated alerts are assigned to (a filterable property, so it lives in the metadata).
pub(crate) const ASSIGNEES: &[&str] = &[
    "soc-tier1@contoso.com",
    "soc-tier2@contoso.com",
    "Automation",
];

impl GenMeta {
    pub fn service(&self) -> &'static str {
        SERVICE_SOURCE[usize::from(self.service)]
    }
    pub fn severity(&self) -> &'static str {
        SEVERITY[usize::from(self.severity)]
    }
    pub fn status(&self) -> &'static str {
        STATUS[usize::from(self.status)]
    }
    pub fn classification(&self) -> &'static str {
        CLASSIFICATION[usize::from(self.classification)]
    }
    pub fn determination(&self) -> &'static str {
        DETERMINATION[usize::from(self.determination)]
    }
    pub fn assigned_to(&self) -> Option<&'static str> {
        usize::from(self.assignee)
            .checked_sub(1)
            .and_then(|i| ASSIGNEES.get(i).copied())
    }
}

// Indices into SERVICE_SOURCE (alerts.rs), with how often each occurs, in percent.
const ENDPOINT: u8 = 1;
const IDENTITY: u8 = 2;
pub(crate) const CLOUD_APPS: u8 = 3;
const OFFICE: u8 = 4;
const XDR: u8 = 5;
const AADIP: u8 = 6;
const DLP: u8 = 8;
/// `microsoftSentinel`, declared after `unknownFutureValue`: Graph sends it only to clients that
/// prefer `include-unknown-enum-members`, so the generator emits some to exercise that.
const SENTINEL: u8 = 11;
const SERVICE_WEIGHTS: &[(u8, u32)] = &[
    (ENDPOINT, 35),
    (OFFICE, 25),
    (IDENTITY, 10),
    (CLOUD_APPS, 10),
    (AADIP, 10),
    (XDR, 7),
    (DLP, 2),
    (SENTINEL, 1),
];

pub(crate) fn weighted(rng: &mut Rng, table: &[(u8, u32)]) -> u8 {
    let total: u32 = table.iter().map(|(_, w)| w).sum();
    let mut x = rng.u32(0..total.max(1));
    for &(v, w) in table {
        if x < w {
            return v;
        }
        x -= w;
    }
    table.first().map_or(0, |(v, _)| *v)
}

/// Draws the metadata of a new alert last updated at `last_update`.
pub(crate) fn new_meta(rng: &mut Rng, last_update: i64) -> GenMeta {
    let service = weighted(rng, SERVICE_WEIGHTS);
    // severity: informational, low, medium, high; status: new, inProgress, resolved.
    let severity = weighted(rng, &[(1, 10), (2, 35), (3, 35), (4, 20)]);
    let status = weighted(rng, &[(1, 70), (2, 15), (3, 15)]);
    let (classification, determination) = if status == 3 {
        match rng.u8(0..3) {
            0 => (2, *pick(rng, &[2u8, 7, 8, 9, 10])), // truePositive: malware, multiStaged, compromisedAccount, phishing, malicious user
            1 => (1, *pick(rng, &[11u8, 12, 6])), // falsePositive: notMalicious, notEnoughData, other
            _ => (3, *pick(rng, &[4u8, 13, 14, 3])), // expected activity: testing, confirmed, LOB app, personnel
        }
    } else {
        (0, 0)
    };
    let assignee = if status == 1 { 0 } else { 1 + rng.u8(0..3) };
    // New alerts are updated moments after creation; triaged ones hours or days later.
    let age = if status == 1 {
        rng.i64(0..300 * TICKS_PER_SEC)
    } else {
        rng.i64(3600 * TICKS_PER_SEC..2 * 86_400 * TICKS_PER_SEC)
    };
    GenMeta {
        seed: rng.u64(..),
        created: last_update.saturating_sub(age),
        service,
        severity,
        status,
        classification,
        determination,
        assignee,
        incident: 10_000 + rng.u32(0..90_000),
    }
}

/// An alert id in the style of its service source (`da637551227677560813_-961444813` for
/// Defender for Endpoint, `ca` + a Cloud Apps record id, …).
pub(crate) fn new_id(rng: &mut Rng, m: &GenMeta) -> String {
    let dotnet = m.created.saturating_add(time::DOTNET_EPOCH_OFFSET);
    match m.service {
        ENDPOINT => format!("da{dotnet}_{}", rng.i32(..)),
        XDR => format!("ed{dotnet}_{}", rng.i32(..)),
        CLOUD_APPS => format!("ca{}", hex(rng, 24)),
        OFFICE => format!("fa{}", guid(rng)),
        IDENTITY => format!("aa{}", guid(rng)),
        AADIP => format!("ad{}", guid(rng)),
        SENTINEL => format!("sn{}", guid(rng)),
        _ => format!("dl{}", guid(rng)),
    }
}

pub(crate) fn pick<'a, T>(rng: &mut Rng, xs: &'a [T]) -> &'a T {
    &xs[rng.usize(0..xs.len())]
}

pub(crate) fn pick_str(rng: &mut Rng, xs: &[&'static str]) -> &'static str {
    xs[rng.usize(0..xs.len())]
}

pub(crate) fn hex(rng: &mut Rng, n: usize) -> String {
    const H: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(n);
    let mut bits = 0u64;
    for i in 0..n {
        // One random u64 gives sixteen hex digits.
        if i % 16 == 0 {
            bits = rng.u64(..);
        }
        out.push(char::from(H[(bits & 0xf) as usize]));
        bits >>= 4;
    }
    out
}

pub(crate) fn guid(rng: &mut Rng) -> String {
    format!(
        "{}-{}-{}-{}-{}",
        hex(rng, 8),
        hex(rng, 4),
        hex(rng, 4),
        hex(rng, 4),
        hex(rng, 12)
    )
}

// ---------------------------------------------------------------------------------------------
// A minimal JSON text writer: keys are literals we control, values are escaped.

/// Bytes that JSON strings must escape: controls, quote and backslash.
static NEEDS_ESCAPE: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = true;
        i += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t
};

/// Appends `s` as a JSON string literal.
pub(crate) fn esc(out: &mut String, s: &str) {
    out.push('"');
    // Most values need no escaping; one table-driven scan finds out.
    if !s.bytes().any(|b| NEEDS_ESCAPE[usize::from(b)]) {
        out.push_str(s);
        out.push('"');
        return;
    }
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let rep = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..=0x1f => "",
            _ => continue,
        };
        // Escaped bytes are ASCII, so both slice ends are char boundaries.
        out.push_str(&s[start..i]);
        if rep.is_empty() {
            let _ = write!(out, "\\u{b:04x}");
        } else {
            out.push_str(rep);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

pub(crate) struct Obj<'a> {
    out: &'a mut String,
    first: bool,
}

impl<'a> Obj<'a> {
    pub fn open(out: &'a mut String) -> Self {
        out.push('{');
        Obj { out, first: true }
    }
    fn key(&mut self, k: &str) {
        if !self.first {
            self.out.push(',');
        }
        self.first = false;
        self.out.push('"');
        self.out.push_str(k);
        self.out.push_str("\":");
    }
    pub fn s(&mut self, k: &str, v: &str) -> &mut Self {
        self.key(k);
        esc(self.out, v);
        self
    }
    pub fn os(&mut self, k: &str, v: Option<&str>) -> &mut Self {
        match v {
            Some(v) => self.s(k, v),
            None => self.null(k),
        }
    }
    pub fn n(&mut self, k: &str, v: impl Display) -> &mut Self {
        self.key(k);
        let _ = write!(self.out, "{v}");
        self
    }
    pub fn null(&mut self, k: &str) -> &mut Self {
        self.key(k);
        self.out.push_str("null");
        self
    }
    pub fn t7(&mut self, k: &str, ticks: i64) -> &mut Self {
        self.key(k);
        self.out.push('"');
        time::write_iso7(self.out, ticks);
        self.out.push('"');
        self
    }
    pub fn t3(&mut self, k: &str, ticks: i64) -> &mut Self {
        let v = time::iso3(ticks);
        self.s(k, &v)
    }
    /// A value that is already JSON text.
    pub fn raw(&mut self, k: &str, json: &str) -> &mut Self {
        self.key(k);
        self.out.push_str(json);
        self
    }
    pub fn strs(&mut self, k: &str, vs: &[&str]) -> &mut Self {
        self.key(k);
        self.out.push('[');
        for (i, v) in vs.iter().enumerate() {
            if i > 0 {
                self.out.push(',');
            }
            esc(self.out, v);
        }
        self.out.push(']');
        self
    }
    pub fn obj(&mut self, k: &str, f: impl FnOnce(&mut Obj<'_>)) -> &mut Self {
        self.key(k);
        let mut o = Obj::open(self.out);
        f(&mut o);
        o.close();
        self
    }
    /// An array of `n` objects, the i-th written by `f(i, ..)`.
    pub fn objs(&mut self, k: &str, n: usize, mut f: impl FnMut(usize, &mut Obj<'_>)) -> &mut Self {
        self.key(k);
        self.out.push('[');
        for i in 0..n {
            if i > 0 {
                self.out.push(',');
            }
            let mut o = Obj::open(self.out);
            f(i, &mut o);
            o.close();
        }
        self.out.push(']');
        self
    }
    pub fn close(self) {
        self.out.push('}');
    }
}

// ---------------------------------------------------------------------------------------------
// Templates.

#[derive(Clone, Copy)]
enum Ev {
    Device,
    File,
    Process,
    RegKey,
    RegValue,
    User,
    Ip,
    Url,
    Mailbox,
    Message,
    CloudApp,
}

struct Template {
    title: &'static str,
    category: &'static str,
    mitre: &'static [&'static str],
    detection: &'static str,
    description: &'static str,
    /// Evidence in order; the first three always appear, later ones most of the time.
    evidence: &'static [Ev],
    threat: Option<(&'static str, &'static str)>,
}

const ENDPOINT_ACTIONS: &str = "Collect artifacts and determine scope\n\u{FFFD}\tReview the machine timeline for suspicious activities that may have occurred before and after the time of the alert, and record additional related artifacts (files, IPs/URLs) \n\u{FFFD}\tLook for the presence of relevant artifacts on other systems. Identify commonalities and differences between potentially compromised systems.\n\u{FFFD}\tSubmit relevant files for deep analysis and review resulting detailed behavioral information.\n\u{FFFD}\tSubmit undetected files to the MMPC malware portal\n\nInitiate containment & mitigation \n\u{FFFD}\tContact the user to verify intent and initiate local remediation actions as needed.\n\u{FFFD}\tUpdate AV signatures and run a full scan. The scan might reveal and remove previously-undetected malware components.\n\u{FFFD}\tEnsure that the machine has the latest security updates. In particular, ensure that you have installed the latest software, web browser, and Operating System versions.\n\u{FFFD}\tIf credential theft is suspected, reset all relevant users passwords.\n\u{FFFD}\tBlock communication with relevant URLs or IPs at the organization\u{FFFD}s perimeter.";
const EMAIL_ACTIONS: &str = "1. Review the email messages in Explorer (Threat Explorer) and check whether any recipient clicked the URLs or opened the attachments.\n2. If a recipient interacted with the message, reset the user's password, revoke active sessions and review recent sign-in activity for that account.\n3. Soft-delete or move the remaining copies of the message from all mailboxes with Zero-hour auto purge or a manual remediation action.\n4. Block the sender domain and the URLs in the Tenant Allow/Block List so that new messages from this campaign are stopped at the edge.\n5. Review mailbox rules and forwarding settings of the affected users for changes an attacker could have made after a successful phish.\n6. Submit the message to Microsoft for analysis if you believe the verdict is wrong, and inform the users who reported it.";
const IDENTITY_ACTIONS: &str = "1. Investigate the source computer and the account involved: review the timeline of the account in the portal and check for other suspicious activities around the time of the alert.\n2. If the activity is not expected, reset the password of the account and require multi-factor authentication on its next sign-in; revoke refresh tokens and active sessions.\n3. Check whether the IP addresses involved belong to known VPN, proxy or Tor ranges and whether the country is one the user normally signs in from.\n4. Review the permissions granted to the account and to any application it consented to; remove anything that is not needed.\n5. Look for lateral movement: the same source attempting other accounts or resources within the same time window.";

static ENDPOINT_T: &[Template] = &[
    Template { title: "Suspicious execution of hidden file", category: "DefenseEvasion", mitre: &["T1564.001"], detection: "antivirus", description: "A hidden file has been launched. This activity could indicate a compromised host. Attackers often hide files associated with malicious tools to evade file system inspection and defenses.", evidence: &[Ev::Device, Ev::File, Ev::Process, Ev::RegKey, Ev::User, Ev::File], threat: None },
    Template { title: "Suspicious PowerShell command line", category: "Execution", mitre: &["T1059.001", "T1027"], detection: "microsoftDefenderForEndpoint", description: "A suspicious PowerShell activity was observed on the machine. This behavior may indicate that PowerShell was used during installation, exploration, or in some cases in lateral movement activities which are used by attackers to invoke modules, download external payloads, or get more information about the system.", evidence: &[Ev::Device, Ev::Process, Ev::User, Ev::Process, Ev::Url, Ev::Ip], threat: None },
    Template { title: "Credential dumping activity observed", category: "CredentialAccess", mitre: &["T1003.001"], detection: "microsoftDefenderForEndpoint", description: "A process accessed the memory of the Local Security Authority Subsystem Service (LSASS) in a way that is consistent with credential theft tools such as Mimikatz.", evidence: &[Ev::Device, Ev::Process, Ev::File, Ev::User, Ev::RegValue], threat: Some(("Mimikatz", "Mimikatz")) },
    Template { title: "Ransomware behavior detected in the file system", category: "Impact", mitre: &["T1486", "T1490"], detection: "microsoftDefenderForEndpoint", description: "A process created many files with unusual extensions and deleted volume shadow copies, a pattern typical of ransomware encrypting the file system.", evidence: &[Ev::Device, Ev::Process, Ev::File, Ev::File, Ev::User, Ev::RegKey, Ev::Ip], threat: Some(("Ransom:Win32/LockBit", "LockBit")) },
    Template { title: "Suspicious scheduled task", category: "Persistence", mitre: &["T1053.005"], detection: "microsoftDefenderForEndpoint", description: "A scheduled task was created that runs a script from a user-writable folder. Attackers use scheduled tasks to keep a foothold on a compromised machine across reboots.", evidence: &[Ev::Device, Ev::Process, Ev::File, Ev::RegValue, Ev::User], threat: None },
    Template { title: "An active 'Emotet' malware was detected", category: "Malware", mitre: &["T1204.002"], detection: "antivirus", description: "Emotet malware was detected while it was running on the machine. The file was quarantined but related processes may still be active.", evidence: &[Ev::Device, Ev::File, Ev::Process, Ev::Url, Ev::Ip], threat: Some(("Trojan:Win32/Emotet.RPX!MTB", "Emotet")) },
];
static OFFICE_T: &[Template] = &[
    Template { title: "Email messages containing malicious URL removed after delivery", category: "InitialAccess", mitre: &["T1566.002"], detection: "microsoftDefenderForOffice365", description: "Emails containing a malicious URL were delivered and later removed by zero-hour auto purge. Recipients may have clicked the URL before it was removed.", evidence: &[Ev::Message, Ev::Mailbox, Ev::Url, Ev::User, Ev::Ip, Ev::Message], threat: None },
    Template { title: "Email messages containing malware removed after delivery", category: "InitialAccess", mitre: &["T1566.001"], detection: "microsoftDefenderForOffice365", description: "Emails with a malicious attachment were delivered to mailboxes in your organization and later removed.", evidence: &[Ev::Message, Ev::Mailbox, Ev::File, Ev::User, Ev::Mailbox], threat: Some(("TrojanDownloader:O97M/Donoff", "Donoff")) },
    Template { title: "A potentially malicious URL click was detected", category: "InitialAccess", mitre: &["T1204.001", "T1566.002"], detection: "microsoftDefenderForOffice365", description: "A user clicked a URL in an email that was later identified as malicious by Safe Links.", evidence: &[Ev::Url, Ev::Message, Ev::Mailbox, Ev::User, Ev::Ip], threat: None },
    Template { title: "Email reported by user as malware or phish", category: "InitialAccess", mitre: &["T1566"], detection: "microsoftDefenderForOffice365", description: "A user reported an email as phishing or malware using the Report button. The message is queued for automated investigation.", evidence: &[Ev::Message, Ev::Mailbox, Ev::User, Ev::Url], threat: None },
];
static IDENTITY_T: &[Template] = &[
    Template { title: "Suspected brute-force attack (LDAP)", category: "CredentialAccess", mitre: &["T1110", "T1110.003"], detection: "microsoftDefenderForIdentity", description: "An actor on a workstation attempted to authenticate with many passwords against accounts using simple LDAP binds; some attempts may have succeeded.", evidence: &[Ev::User, Ev::Device, Ev::Ip, Ev::User, Ev::Device], threat: None },
    Template { title: "Suspected DCSync attack (replication of directory services)", category: "CredentialAccess", mitre: &["T1003.006"], detection: "microsoftDefenderForIdentity", description: "A replication request was sent from a computer that is not a domain controller, which may indicate an attempt to retrieve password hashes of domain accounts.", evidence: &[Ev::User, Ev::Device, Ev::Device, Ev::Ip], threat: None },
    Template { title: "Account enumeration reconnaissance", category: "Discovery", mitre: &["T1087.002"], detection: "microsoftDefenderForIdentity", description: "An actor made suspicious Kerberos requests attempting to enumerate valid accounts in the domain.", evidence: &[Ev::Device, Ev::User, Ev::Ip, Ev::User], threat: None },
];
static CLOUD_T: &[Template] = &[
    Template { title: "Impossible travel activity", category: "InitialAccess", mitre: &["T1078"], detection: "cloudAppSecurity", description: "The user signed in from two distant countries within a time shorter than the travel time between them, which may indicate that a different user is using the same credentials.", evidence: &[Ev::User, Ev::Ip, Ev::Ip, Ev::CloudApp, Ev::CloudApp], threat: None },
    Template { title: "Mass download by a single user", category: "Exfiltration", mitre: &["T1530"], detection: "cloudAppSecurity", description: "A user downloaded an unusually large number of files from a cloud storage application in a single session.", evidence: &[Ev::User, Ev::CloudApp, Ev::Ip, Ev::File, Ev::File], threat: None },
    Template { title: "Suspicious inbox forwarding", category: "Exfiltration", mitre: &["T1114.003"], detection: "cloudAppSecurity", description: "A user created an inbox rule that forwards all email to an external address.", evidence: &[Ev::User, Ev::Mailbox, Ev::CloudApp, Ev::Ip], threat: None },
];
static AADIP_T: &[Template] = &[
    Template { title: "Unfamiliar sign-in properties", category: "InitialAccess", mitre: &["T1078.004"], detection: "azureAdIdentityProtection", description: "The sign-in had properties (IP address, ASN, location, device) that have not been seen recently for this user.", evidence: &[Ev::User, Ev::Ip, Ev::CloudApp, Ev::Ip], threat: None },
    Template { title: "Anonymous IP address", category: "InitialAccess", mitre: &["T1090.003"], detection: "azureAdIdentityProtection", description: "A sign-in came from an anonymous IP address such as a Tor exit node or an anonymizing VPN.", evidence: &[Ev::User, Ev::Ip, Ev::CloudApp], threat: None },
    Template { title: "Password spray", category: "CredentialAccess", mitre: &["T1110.003"], detection: "azureAdIdentityProtection", description: "Many accounts were tried with a few common passwords from the same infrastructure, and this account signed in successfully.", evidence: &[Ev::User, Ev::Ip, Ev::Ip, Ev::CloudApp, Ev::User], threat: None },
];
static XDR_T: &[Template] = &[
    Template { title: "Possible BEC financial fraud", category: "InitialAccess", mitre: &["T1566", "T1114"], detection: "microsoft365Defender", description: "A compromised account sent email requesting a change of bank details to external recipients after creating a hiding inbox rule.", evidence: &[Ev::User, Ev::Mailbox, Ev::Message, Ev::Ip, Ev::CloudApp, Ev::Url], threat: None },
    Template { title: "Suspicious sign-in followed by inbox rule creation", category: "Persistence", mitre: &["T1564.008", "T1078"], detection: "microsoft365Defender", description: "Shortly after a risky sign-in, the account created an inbox rule that moves messages to an obscure folder.", evidence: &[Ev::User, Ev::Ip, Ev::Mailbox, Ev::CloudApp, Ev::Device], threat: None },
];
// Sentinel's analytics rules; both detection sources are late members too.
static SENTINEL_T: &[Template] = &[
    Template { title: "Multiple failed sign-ins followed by a success from a new country", category: "CredentialAccess", mitre: &["T1110"], detection: "scheduledAlerts", description: "A scheduled analytics rule found repeated failed sign-ins to one account followed by a successful sign-in from a country the account had not used before.", evidence: &[Ev::User, Ev::Ip, Ev::CloudApp, Ev::Ip], threat: None },
    Template { title: "Rare process launched by an Office application", category: "Execution", mitre: &["T1204.002"], detection: "nrtAlerts", description: "A near-real-time analytics rule found an Office application starting a process it had not started before in this workspace.", evidence: &[Ev::Device, Ev::Process, Ev::User, Ev::File], threat: None },
];
static DLP_T: &[Template] = &[
    Template { title: "DLP policy (Financial data) matched for email", category: "Exfiltration", mitre: &[], detection: "microsoftDataLossPrevention", description: "An email containing credit card numbers and bank account numbers was sent to an external recipient.", evidence: &[Ev::User, Ev::Mailbox, Ev::Message, Ev::File], threat: None },
];

/// The recommended-actions texts, escaped once: they are the longest strings of an alert and
/// full of newlines and tabs, so escaping them on every render would dominate its cost.
fn escaped_actions(i: usize) -> &'static str {
    static CACHE: std::sync::OnceLock<[String; 3]> = std::sync::OnceLock::new();
    let all = CACHE.get_or_init(|| {
        [ENDPOINT_ACTIONS, EMAIL_ACTIONS, IDENTITY_ACTIONS].map(|t| {
            let mut s = String::with_capacity(t.len() + 64);
            esc(&mut s, t);
            s
        })
    });
    all.get(i).map_or("null", String::as_str)
}

/// Templates, product name and (escaped) recommended actions of a service source.
fn templates(service: u8) -> (&'static [Template], &'static str, &'static str) {
    let (tpls, product, actions) = match service {
        ENDPOINT => (ENDPOINT_T, "Microsoft Defender for Endpoint", 0),
        OFFICE => (OFFICE_T, "Microsoft Defender for Office 365", 1),
        IDENTITY => (IDENTITY_T, "Microsoft Defender for Identity", 2),
        CLOUD_APPS => (CLOUD_T, "Microsoft Defender for Cloud Apps", 2),
        AADIP => (AADIP_T, "Microsoft Entra ID Protection", 2),
        XDR => (XDR_T, "Microsoft Defender XDR", 1),
        SENTINEL => (SENTINEL_T, "Microsoft Sentinel", 2),
        _ => (DLP_T, "Microsoft Data Loss Prevention", 1),
    };
    (tpls, product, escaped_actions(actions))
}

pub(crate) const USERS: &[(&str, &str)] = &[
    ("Megan Bowen", "meganb"),
    ("Alex Wilber", "alexw"),
    ("Lidia Holloway", "lidiah"),
    ("Nestor Wilke", "nestorw"),
    ("Adele Vance", "adelev"),
    ("Grady Archie", "gradya"),
    ("Isaiah Langer", "isaiahl"),
    ("Johanna Lorenz", "johannal"),
    ("Lee Gu", "leeg"),
    ("Lynne Robbins", "lynner"),
    ("Miriam Graham", "miriamg"),
    ("Patti Fernandez", "pattif"),
    ("Pradeep Gupta", "pradeepg"),
    ("Diego Siciliani", "diegos"),
];
pub(crate) const DOMAINS: &[&str] = &["contoso.com", "fabrikam.com", "woodgrovebank.com"];
pub(crate) const HOSTS: &[&str] = &[
    "desktop-7qk2mnl",
    "laptop-fin-042",
    "srv-sql-01",
    "ws-hr-0193",
    "dc01",
    "win10-eng-077",
    "srv-web-03",
    "laptop-sales-118",
];
pub(crate) const SENDERS: &[(&str, &str, &str)] = &[
    (
        "Microsoft 365 Security",
        "micros0ft-secure.com",
        "no-reply@micros0ft-secure.com",
    ),
    ("DocuSign", "docusign-review.net", "dse@docusign-review.net"),
    (
        "IT Helpdesk",
        "helpdesk-portal.co",
        "support@helpdesk-portal.co",
    ),
    (
        "FedEx Delivery",
        "fedex-tracking.info",
        "tracking@fedex-tracking.info",
    ),
    (
        "Accounts Payable",
        "invoices-pay.biz",
        "ap@invoices-pay.biz",
    ),
];
pub(crate) const SUBJECTS: &[&str] = &[
    "Action required: your password expires today",
    "Invoice #88231 overdue",
    "Shared document: Q3 budget review.xlsx",
    "Your package could not be delivered",
    "Voicemail received (00:42)",
    "Urgent wire transfer request",
];
pub(crate) const URLS: &[&str] = &[
    "https://login-micros0ft-secure.com/owa/auth/logon.aspx?replaceCurrent=1",
    "http://docusign-review.net/d/9f8a7c21/view",
    "https://fedex-tracking.info/track?id=774899120034",
    "https://bit.ly/3xQz7Pa",
    "https://contoso-sharepoint.web.app/shared/budget.xlsx",
];
pub(crate) const FILES: &[(&str, &str, u32)] = &[
    (
        "invoice_88231.docm",
        "C:\\Users\\Public\\Downloads",
        184_320,
    ),
    ("mimikatz.exe", "C:\\Windows\\Temp", 1_250_056),
    (
        "svchost32.exe",
        "C:\\ProgramData\\Microsoft\\Crypto",
        733_184,
    ),
    ("update.ps1", "C:\\Users\\Public", 4_812),
    (
        "MsSense.exe",
        "C:\\Program Files\\Windows Defender Advanced Threat Protection",
        6_136_392,
    ),
    ("payload.dll", "C:\\Users\\Public\\Libraries", 98_304),
];
const COMMANDS: &[(&str, &str)] = &[
    ("powershell.exe", "powershell.exe -nop -w hidden -enc SQBFAFgAIAAoAE4AZQB3AC0ATwBiAGoAZQBjAHQAIABOAGUAdAAuAFcAZQBiAEMAbABpAGUAbgB0ACkA"),
    ("rundll32.exe", "rundll32.exe C:\\Users\\Public\\Libraries\\payload.dll,DllRegisterServer"),
    ("cmd.exe", "cmd.exe /c whoami /all > C:\\Users\\Public\\o.txt"),
    ("MsSense.exe", "\"MsSense.exe\""),
    ("schtasks.exe", "schtasks.exe /create /tn \"OneDrive Update\" /tr C:\\Users\\Public\\update.ps1 /sc hourly"),
];
pub(crate) const CLOUD_APPS_LIST: &[(i64, &str)] = &[
    (11161, "Office 365"),
    (20893, "Microsoft Exchange Online"),
    (15600, "Microsoft OneDrive for Business"),
    (20892, "Microsoft SharePoint Online"),
    (12260, "Microsoft Azure"),
    (10489, "Box"),
    (11114, "Salesforce"),
    (28375, "Microsoft Teams"),
];
const PLACES: &[(&str, &str, &str, f64, f64)] = &[
    ("US", "Seattle", "Washington", 47.6062, -122.3321),
    ("NL", "Amsterdam", "North Holland", 52.3676, 4.9041),
    ("NG", "Lagos", "Lagos", 6.5244, 3.3792),
    ("RU", "Moscow", "Moscow", 55.7558, 37.6173),
    ("BR", "Sao Paulo", "Sao Paulo", -23.5505, -46.6333),
    ("VN", "Hanoi", "Hanoi", 21.0285, 105.8542),
];
pub(crate) const COMMENTS: &[&str] = &[
    "Investigating with the user; machine isolated pending review.",
    "Confirmed with the service owner: this is a scheduled penetration test.",
    "User confirmed they did not click the link. Message purged from all mailboxes.",
    "Escalated to tier 2 for memory analysis.",
];

/// Coherent entities for one alert, so its evidence tells one story.
struct Ctx {
    rng: Rng,
    created: i64,
    user: (&'static str, &'static str),
    domain: &'static str,
    host: &'static str,
    device_id: String,
    user_sid: String,
    aad_user_id: String,
    sender: (&'static str, &'static str, &'static str),
    subject: &'static str,
}

impl Ctx {
    fn upn(&self) -> String {
        format!("{}@{}", self.user.1, self.domain)
    }
}

pub(crate) fn external_ip(rng: &mut Rng) -> String {
    format!(
        "{}.{}.{}.{}",
        rng.u8(20..220),
        rng.u8(0..=255),
        rng.u8(0..=255),
        rng.u8(1..255)
    )
}

fn user_account(o: &mut Obj<'_>, c: &Ctx) {
    o.s("accountName", c.user.1)
        .s("domainName", c.domain.split('.').next().unwrap_or(c.domain))
        .s("userSid", &c.user_sid)
        .s("azureAdUserId", &c.aad_user_id)
        .s("userPrincipalName", &c.upn())
        .s("displayName", c.user.0);
}

fn file_details(o: &mut Obj<'_>, rng: &mut Rng, f: (&str, &str, u32)) {
    o.s("sha1", &hex(rng, 40))
        .s("sha256", &hex(rng, 64))
        .s("md5", &hex(rng, 32))
        .s("fileName", f.0)
        .s("filePath", f.1)
        .n("fileSize", f.2)
        .s(
            "filePublisher",
            if f.0 == "MsSense.exe" {
                "Microsoft Corporation"
            } else {
                ""
            },
        )
        .null("signer")
        .null("issuer");
}

const VERDICTS: &[&str] = &["unknown", "suspicious", "malicious", "noThreatsFound"];
const REMEDIATION: &[&str] = &["none", "remediated", "prevented", "blocked", "notFound"];

fn evidence(o: &mut Obj<'_>, kind: Ev, c: &mut Ctx) {
    let (ty, roles, detailed): (&str, &[&str], &[&str]) = match kind {
        Ev::Device => ("deviceEvidence", &["compromised"], &["Main device"]),
        Ev::File => ("fileEvidence", &[], &["Referred in command line"]),
        Ev::Process => ("processEvidence", &[], &[]),
        Ev::RegKey => ("registryKeyEvidence", &[], &[]),
        Ev::RegValue => ("registryValueEvidence", &["edited"], &[]),
        Ev::User => (
            "userEvidence",
            &["compromised"],
            &["Account used in sign-in"],
        ),
        Ev::Ip => ("ipEvidence", &["attacker"], &[]),
        Ev::Url => ("urlEvidence", &["contextual"], &["Url in email body"]),
        Ev::Mailbox => ("mailboxEvidence", &["destination"], &["Recipient"]),
        Ev::Message => ("analyzedMessageEvidence", &[], &["Phishing email"]),
        Ev::CloudApp => ("cloudApplicationEvidence", &["contextual"], &[]),
    };
    let full_type = format!("#microsoft.graph.security.{ty}");
    let verdict = *pick(&mut c.rng, VERDICTS);
    let remediation = *pick(&mut c.rng, REMEDIATION);
    o.s("@odata.type", &full_type)
        .t7("createdDateTime", c.created)
        .s("verdict", verdict)
        .s("remediationStatus", remediation)
        .null("remediationStatusDetails");
    let rng = &mut c.rng;
    match kind {
        Ev::Device => {
            let ip = format!(
                "10.{}.{}.{}",
                rng.u8(0..=255),
                rng.u8(0..=255),
                rng.u8(1..255)
            );
            let vm = guid(rng);
            let sub = guid(rng);
            o.t7("firstSeenDateTime", c.created - i64::from(rng.u32(1..400)) * 86_400 * TICKS_PER_SEC)
                .s("mdeDeviceId", &c.device_id)
                .s("azureAdDeviceId", &guid(rng))
                .s("deviceDnsName", &format!("{}.{}", c.host, c.domain))
                .s("hostName", c.host)
                .s("ntDomain", &c.domain.split('.').next().unwrap_or("").to_uppercase())
                .s("dnsDomain", c.domain)
                .s("osPlatform", if c.host.starts_with("srv") || c.host.starts_with("dc") { "WindowsServer2022" } else { "Windows11" })
                .n("osBuild", 22621 + i64::from(rng.u16(0..3000)))
                .s("version", "22H2")
                .s("healthStatus", "active")
                .s("riskScore", pick_str(rng, &["low", "medium", "high"]))
                .n("rbacGroupId", rng.u16(1..200))
                .s("rbacGroupName", "UnassignedGroup")
                .s("onboardingStatus", "onboarded")
                .s("defenderAvStatus", "updated")
                .s("lastIpAddress", &ip)
                .null("lastExternalIpAddress")
                .strs("ipInterfaces", &[&ip, "fe80::1c2b:3a4d:5e6f:7081"])
                .objs("loggedOnUsers", 1, |_, u| {
                    u.s("accountName", c.user.1).s("domainName", &c.domain.split('.').next().unwrap_or("").to_uppercase());
                })
                .obj("vmMetadata", |v| {
                    v.s("vmId", &vm)
                        .s("cloudProvider", "azure")
                        .s("resourceId", &format!("/subscriptions/{sub}/resourceGroups/rg-prod/providers/Microsoft.Compute/virtualMachines/{}", c.host))
                        .s("subscriptionId", &sub);
                });
        }
        Ev::File => {
            let f = *pick(rng, FILES);
            o.s(
                "detectionStatus",
                pick_str(rng, &["detected", "blocked", "prevented"]),
            )
            .s("mdeDeviceId", &c.device_id)
            .obj("fileDetails", |d| file_details(d, rng, f));
        }
        Ev::Process => {
            let (image, cmd) = *pick(rng, COMMANDS);
            let f = (
                image,
                "C:\\Windows\\System32\\WindowsPowerShell\\v1.0",
                450_560 + rng.u32(0..100_000),
            );
            let start =
                c.created - i64::from(rng.u32(1..3600)) * TICKS_PER_SEC - rng.i64(0..TICKS_PER_SEC);
            o.n("processId", rng.u32(400..20_000))
                .n("parentProcessId", rng.u32(400..20_000))
                .s("processCommandLine", cmd)
                .t7("processCreationDateTime", start)
                .t7(
                    "parentProcessCreationDateTime",
                    start - rng.i64(0..86_400 * TICKS_PER_SEC),
                )
                .s("detectionStatus", "detected")
                .s("mdeDeviceId", &c.device_id)
                .obj("imageFile", |d| file_details(d, rng, f))
                .obj("parentProcessImageFile", |d| {
                    d.null("sha1")
                        .null("sha256")
                        .s("fileName", "explorer.exe")
                        .s("filePath", "C:\\Windows")
                        .n("fileSize", 4_841_840)
                        .s("filePublisher", "Microsoft Corporation")
                        .null("signer")
                        .null("issuer");
                })
                .obj("userAccount", |u| user_account(u, c));
        }
        Ev::RegKey => {
            o.s(
                "registryKey",
                "SYSTEM\\CONTROLSET001\\CONTROL\\WMI\\AUTOLOGGER\\SENSEAUDITLOGGER",
            )
            .s("registryHive", "HKEY_LOCAL_MACHINE");
        }
        Ev::RegValue => {
            o.s("mdeDeviceId", &c.device_id)
                .s("registryHive", "HKEY_CURRENT_USER")
                .s(
                    "registryKey",
                    "SOFTWARE\\Microsoft\\Windows\\CurrentVersion\\Run",
                )
                .s("registryValueName", "OneDriveUpdate")
                .s("registryValue", "C:\\Users\\Public\\update.ps1")
                .s("registryValueType", "String");
        }
        Ev::User => {
            o.obj("userAccount", |u| user_account(u, c)).null("stream");
        }
        Ev::Ip => {
            let (cc, city, state, lat, lon) = *pick(rng, PLACES);
            let ip = external_ip(rng);
            o.s("ipAddress", &ip)
                .s("countryLetterCode", cc)
                .obj("location", |l| {
                    l.s("city", city)
                        .s("countryName", cc)
                        .n("latitude", lat)
                        .n("longitude", lon)
                        .s("state", state);
                });
        }
        Ev::Url => {
            o.s("url", pick_str(rng, URLS));
        }
        Ev::Mailbox => {
            let upn = c.upn();
            o.s("displayName", c.user.0)
                .s("primaryAddress", &upn)
                .s("upn", &upn)
                .obj("userAccount", |u| user_account(u, c));
        }
        Ev::Message => {
            let received = c.created - i64::from(rng.u32(60..7200)) * TICKS_PER_SEC;
            let urls = [*pick(rng, URLS), *pick(rng, URLS)];
            let nmid = guid(rng);
            let imid = format!("<{}@{}>", hex(rng, 24).to_uppercase(), c.sender.1);
            let sender_ip = external_ip(rng);
            let recipient = format!("{}@{}", c.user.1, c.domain);
            o.s("antiSpamDirection", "Inbound")
                .n("attachmentsCount", rng.u8(0..3))
                .s(
                    "deliveryAction",
                    pick_str(rng, &["Delivered", "Junked", "Blocked", "Replaced"]),
                )
                .s(
                    "deliveryLocation",
                    pick_str(
                        rng,
                        &["Inbox/folder", "Junk folder", "Quarantine", "Deleted Items"],
                    ),
                )
                .s("internetMessageId", &imid)
                .s("language", "en")
                .s("networkMessageId", &nmid)
                .obj("p1Sender", |s| {
                    s.s("displayName", c.sender.0)
                        .s("domainName", c.sender.1)
                        .s("emailAddress", c.sender.2);
                })
                .obj("p2Sender", |s| {
                    s.s("displayName", c.sender.0)
                        .s("domainName", c.sender.1)
                        .s("emailAddress", c.sender.2);
                })
                .t7("receivedDateTime", received)
                .s("recipientEmailAddress", &recipient)
                .s("senderIp", &sender_ip)
                .s("subject", c.subject)
                .strs(
                    "threatDetectionMethods",
                    &["urlDetonationReputation", "fingerprintMatching"],
                )
                .strs("threats", &["Phish"])
                .n("urlCount", 2)
                .strs("urls", &urls)
                .s("urn", &format!("urn:MailEntity:{}", hex(rng, 32)));
        }
        Ev::CloudApp => {
            let (app, name) = *pick(rng, CLOUD_APPS_LIST);
            o.n("appId", app)
                .s("displayName", name)
                .n("instanceId", 0)
                .s("instanceName", name)
                .n("saasAppId", app)
                .null("stream");
        }
    }
    let tags: &[&str] = if matches!(kind, Ev::Device) {
        &["Test Machine"]
    } else {
        &[]
    };
    o.strs("roles", roles)
        .strs("detailedRoles", detailed)
        .strs("tags", tags);
}

/// Writes the full alerts_v2 JSON object of a generated alert.
pub(crate) fn render(out: &mut String, tenant: &str, id: &str, last_update: i64, m: &GenMeta) {
    let mut rng = Rng::with_seed(m.seed);
    let (tpls, product, actions) = templates(m.service);
    let t = pick(&mut rng, tpls);
    let mut c = Ctx {
        created: m.created,
        user: *pick(&mut rng, USERS),
        domain: pick_str(&mut rng, DOMAINS),
        host: pick_str(&mut rng, HOSTS),
        device_id: hex(&mut rng, 40),
        user_sid: format!(
            "S-1-5-21-{}-{}-{}-{}",
            rng.u32(..),
            rng.u32(..),
            rng.u32(..),
            rng.u16(1000..9999)
        ),
        aad_user_id: guid(&mut rng),
        sender: *pick(&mut rng, SENDERS),
        subject: pick_str(&mut rng, SUBJECTS),
        rng: Rng::with_seed(m.seed ^ 0x9e37_79b9_7f4a_7c15),
    };
    // Drawn and discarded so the rest of the rendering keeps its random sequence.
    let _ = rng.u32(0..90_000);
    let incident = m.incident;
    let provider_id = id
        .get(2..)
        .filter(|_| !id.starts_with("da") && !id.starts_with("ed"))
        .unwrap_or(id);
    let first_activity =
        m.created - i64::from(rng.u32(60..6 * 3600)) * TICKS_PER_SEC - rng.i64(0..TICKS_PER_SEC);
    let last_activity = first_activity + rng.i64(0..=(m.created - first_activity).max(0));
    let resolved = m.status == 3;
    let n_evidence = (3 + rng.usize(0..=t.evidence.len().saturating_sub(3))).min(t.evidence.len());
    let n_comments = if m.status == 1 { 0 } else { rng.usize(1..3) };
    let comment_times: Vec<i64> = (0..n_comments)
        .map(|_| m.created + rng.i64(0..=(last_update - m.created).max(0)))
        .collect();

    let mut o = Obj::open(out);
    o.s("@odata.type", "#microsoft.graph.security.alert")
        .s("id", id)
        .s("providerAlertId", provider_id)
        .s("incidentId", &incident.to_string())
        .s("status", m.status())
        .s("severity", m.severity())
        .s("classification", m.classification())
        .s("determination", m.determination())
        .s("serviceSource", m.service())
        .s("detectionSource", t.detection)
        .s("productName", product)
        .s("detectorId", &guid(&mut rng))
        .s("tenantId", tenant)
        .s("title", t.title)
        .s("description", t.description)
        .raw("recommendedActions", actions)
        .s("category", t.category)
        .strs("categories", &[t.category])
        .os("assignedTo", m.assigned_to())
        .s(
            "alertWebUrl",
            &format!("https://security.microsoft.com/alerts/{id}?tid={tenant}"),
        )
        .s(
            "incidentWebUrl",
            &format!("https://security.microsoft.com/incidents/{incident}?tid={tenant}"),
        )
        .null("actorDisplayName")
        .os("threatDisplayName", t.threat.map(|x| x.0))
        .os("threatFamilyName", t.threat.map(|x| x.1))
        .null("alertPolicyId")
        .s(
            "investigationState",
            if resolved {
                "successfullyRemediated"
            } else {
                "unsupportedAlertType"
            },
        )
        .strs("mitreTechniques", t.mitre)
        .t7("createdDateTime", m.created)
        .t7("lastUpdateDateTime", last_update);
    if resolved {
        o.t7("resolvedDateTime", last_update);
    } else {
        o.null("resolvedDateTime");
    }
    o.t3("firstActivityDateTime", first_activity)
        .t3("lastActivityDateTime", last_activity)
        .objs("comments", n_comments, |i, cm| {
            cm.s(
                "comment",
                COMMENTS[(m.seed as usize).wrapping_add(i) % COMMENTS.len()],
            )
            .s(
                "createdByDisplayName",
                m.assigned_to().unwrap_or("soc-tier1@contoso.com"),
            )
            .t7("createdDateTime", comment_times[i]);
        })
        .obj("customDetails", |_| {})
        .obj("additionalData", |_| {})
        .objs("evidence", n_evidence, |i, ev| {
            evidence(ev, t.evidence[i], &mut c)
        })
        .strs(
            "systemTags",
            if rng.bool() {
                &["Defender Experts"]
            } else {
                &[]
            },
        );
    o.close();
}

impl Simulator {
    /// Keeps a tenant's data moving for the demo: about `per_minute` alert events a minute, most
    /// of them new alerts, the rest triage updates of recent ones (new → inProgress → resolved,
    /// with assignedTo, classification and determination set). At lower rates it also creates
    /// and triages incidents, files threat submissions that move notStarted → running →
    /// succeeded, and raises Cloud Apps alerts (some with an alerts_v2 twin) that are later read
    /// or resolved; and drops user-reported messages into the tenant's mailboxes, if it has any
    /// ([`Simulator::add_mailbox`]). Stops on [`Simulator::shutdown`].
    pub fn spawn_stream(&self, tenant_id: &str, per_minute: u32) {
        if per_minute == 0 {
            return;
        }
        let sim = self.clone();
        let tenant = tenant_id.to_string();
        let period = Duration::from_secs_f64(60.0 / f64::from(per_minute));
        let stop = self.inner.stop.clone();
        let runtime = self.inner.runtime.clone();
        self.inner.tasks.spawn_on(
            async move {
                let mut rng = Rng::new();
                // Start from the newest alerts already there so updates also touch the backlog.
                let mut recent: Vec<String> = sim.newest_ids(&tenant, 200);
                let mut tick = tokio::time::interval(period);
                loop {
                    tokio::select! {
                        () = stop.cancelled() => break,
                        _ = tick.tick() => {}
                    }
                    sim.stream_alert(&tenant, &mut rng, &mut recent);
                    // The other sources move at a fraction of the alert rate.
                    match rng.u8(0..100) {
                        0..20 => sim.stream_incident(&tenant, &mut rng),
                        20..32 => sim.stream_submission(&tenant, &mut rng),
                        32..52 => sim.stream_cloud_app_alert(&tenant, &mut rng),
                        // A user report in each of the tenant's mailboxes, if it has any.
                        52..60 => sim.stream_report(&tenant, &mut rng),
                        _ => {}
                    }
                }
            },
            &runtime,
        );
    }

    fn stream_alert(&self, tenant: &str, rng: &mut Rng, recent: &mut Vec<String>) {
        if recent.is_empty() || rng.u8(0..10) < 7 {
            let now = std::time::SystemTime::now();
            recent.extend(self.generate_alerts(tenant, 1, now, now + Duration::from_micros(1)));
            if recent.len() > 500 {
                recent.drain(..250);
            }
            return;
        }
        let id = recent[rng.usize(0..recent.len())].clone();
        let status = self
            .alert(tenant, &id)
            .and_then(|a| a.get("status").and_then(|s| s.as_str()).map(str::to_owned));
        let patch = match status.as_deref() {
            Some("new") => {
                serde_json::json!({"status": "inProgress", "assignedTo": "soc-tier1@contoso.com"})
            }
            Some("inProgress") => {
                let (c, d) = *pick(
                    rng,
                    &[
                        ("truePositive", "malware"),
                        ("falsePositive", "notMalicious"),
                        ("informationalExpectedActivity", "securityTesting"),
                    ],
                );
                serde_json::json!({"status": "resolved", "classification": c, "determination": d,
                    "resolvedDateTime": time::iso7(time::now_ticks())})
            }
            _ => return,
        };
        self.update_alert(tenant, &id, patch);
    }

    fn stream_incident(&self, tenant: &str, rng: &mut Rng) {
        let recent = self.newest_incidents(tenant, 50);
        if recent.is_empty() || rng.bool() {
            let now = std::time::SystemTime::now();
            self.generate_incidents(tenant, 1, now, now + Duration::from_micros(1));
            return;
        }
        let id = &recent[rng.usize(0..recent.len())];
        let status = self
            .incident(tenant, id)
            .and_then(|v| v.get("status").and_then(|s| s.as_str()).map(str::to_owned));
        let analyst = "soc-tier2@contoso.com";
        let patch = match status.as_deref() {
            Some("active") if rng.u8(0..10) == 0 => match recent.iter().find(|o| *o != id) {
                // Merged into another incident.
                Some(other) => {
                    serde_json::json!({"status": "redirected", "redirectIncidentId": other})
                }
                None => return,
            },
            Some("active") => serde_json::json!({"status": "inProgress", "assignedTo": analyst,
                "lastModifiedBy": analyst}),
            Some("inProgress" | "awaitingAction") => {
                let (c, d) = *pick(
                    rng,
                    &[
                        ("truePositive", "multiStagedAttack"),
                        ("falsePositive", "notMalicious"),
                        ("informationalExpectedActivity", "securityTesting"),
                    ],
                );
                serde_json::json!({"status": "resolved", "classification": c, "determination": d,
                    "resolvingComment": "Closed by the demo stream.", "lastModifiedBy": analyst})
            }
            _ => return,
        };
        self.update_incident(tenant, id, patch);
    }

    fn stream_submission(&self, tenant: &str, rng: &mut Rng) {
        let list = *pick(
            rng,
            &[
                "emailThreats",
                "emailThreats",
                "emailThreats",
                "urlThreats",
                "fileThreats",
            ],
        );
        let pending = self.pending_submissions(tenant, list);
        if pending.is_empty() || rng.bool() {
            let now = std::time::SystemTime::now();
            for id in self.generate_submissions(tenant, list, 1, now, now) {
                self.update_submission(
                    tenant,
                    list,
                    &id,
                    serde_json::json!({"status": "notStarted", "result": null, "adminReview": null}),
                );
            }
            return;
        }
        let (id, status) = &pending[rng.usize(0..pending.len())];
        let patch = if status == "notStarted" {
            serde_json::json!({"status": "running"})
        } else if rng.u8(0..10) == 0 {
            serde_json::json!({"status": "failed", "result": {"detail": "itemNotReceivedByService",
                "category": "noResultAvailable", "userMailboxSetting": null, "detectedUrls": [], "detectedFiles": []}})
        } else {
            serde_json::json!({"status": "succeeded", "result": crate::submissions::finished_result(rng, list)})
        };
        self.update_submission(tenant, list, id, patch);
    }

    fn stream_cloud_app_alert(&self, tenant: &str, rng: &mut Rng) {
        let recent = self.newest_cloud_app_alerts(tenant, 100);
        let fresh = serde_json::json!({"statusValue": 0, "resolutionStatusValue": 0,
            "resolveTime": null, "handledByUser": null, "comment": ""});
        if recent.is_empty() || rng.bool() {
            let now = std::time::SystemTime::now();
            let id = if rng.u8(0..3) == 0 {
                let (id, twin) = self.generate_cloud_app_alert_with_twin(tenant, now);
                self.update_alert(
                    tenant,
                    &twin,
                    serde_json::json!({"status": "new", "classification": "unknown",
                        "determination": "unknown", "assignedTo": null, "resolvedDateTime": null}),
                );
                id
            } else {
                self.generate_cloud_app_alerts(tenant, 1, now, now)
                    .pop()
                    .unwrap_or_default()
            };
            self.update_cloud_app_alert(tenant, &id, fresh);
            return;
        }
        let id = &recent[rng.usize(0..recent.len())];
        let Some(alert) = self.cloud_app_alert(tenant, id) else {
            return;
        };
        let int = |k: &str| alert.get(k).and_then(serde_json::Value::as_i64);
        let (patch, twin) = if int("statusValue") == Some(0) {
            (
                serde_json::json!({"statusValue": 1, "handledByUser": "soc-tier1@contoso.com"}),
                serde_json::json!({"status": "inProgress", "assignedTo": "soc-tier1@contoso.com"}),
            )
        } else if int("resolutionStatusValue") == Some(0) {
            let (res, c, d) = *pick(
                rng,
                &[
                    (2, "unknown", "unknown"),
                    (3, "falsePositive", "notMalicious"),
                    (5, "truePositive", "compromisedAccount"),
                ],
            );
            let now = time::now_ticks();
            (
                serde_json::json!({"resolutionStatusValue": res, "resolveTime": time::iso3(now),
                    "handledByUser": "soc-tier2@contoso.com"}),
                serde_json::json!({"status": "resolved", "classification": c, "determination": d,
                    "resolvedDateTime": time::iso7(now)}),
            )
        } else {
            return;
        };
        self.update_cloud_app_alert(tenant, id, patch);
        // The same detection seen through alerts_v2 changes with it, if it has a twin.
        self.update_alert(tenant, &format!("ca{id}"), twin);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendered_alerts_are_valid_json_of_realistic_size() {
        let mut rng = Rng::with_seed(7);
        let base = time::parse("2024-06-01T00:00:00Z").unwrap_or_default();
        let mut sizes = Vec::new();
        for i in 0..300 {
            let m = new_meta(&mut rng, base + i);
            let id = new_id(&mut rng, &m);
            let mut s = String::new();
            render(&mut s, "tenant-1", &id, base + i, &m);
            let v: serde_json::Value = match serde_json::from_str(&s) {
                Ok(v) => v,
                Err(e) => panic!("{e}: {s}"),
            };
            assert_eq!(v["id"], id.as_str());
            assert_eq!(v["lastUpdateDateTime"], time::iso7(base + i));
            assert!(v["createdDateTime"].as_str() <= v["lastUpdateDateTime"].as_str());
            assert_eq!(v.as_object().map(|o| o.len()), Some(37), "{s}");
            sizes.push(s.len());
        }
        let (min, max) = (sizes.iter().min().copied(), sizes.iter().max().copied());
        assert!(
            min >= Some(3000) && max <= Some(9500),
            "sizes {min:?}..{max:?}"
        );
    }

    #[test]
    fn every_evidence_type_appears() {
        let mut rng = Rng::with_seed(11);
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..500 {
            let m = new_meta(&mut rng, i);
            let mut s = String::new();
            render(&mut s, "t", "x", i, &m);
            let v: serde_json::Value = serde_json::from_str(&s).unwrap_or_default();
            for e in v["evidence"].as_array().into_iter().flatten() {
                seen.insert(e["@odata.type"].as_str().unwrap_or("").to_string());
                if e["@odata.type"] == "#microsoft.graph.security.cloudApplicationEvidence" {
                    assert!(e["appId"].is_i64());
                }
            }
        }
        assert_eq!(seen.len(), 11, "{seen:?}");
    }

    #[test]
    fn escapes_control_characters() {
        let mut s = String::new();
        esc(&mut s, "a\"b\\c\nd\u{1}\u{FFFD}");
        assert_eq!(
            serde_json::from_str::<String>(&s).ok().as_deref(),
            Some("a\"b\\c\nd\u{1}\u{FFFD}")
        );
    }
}
