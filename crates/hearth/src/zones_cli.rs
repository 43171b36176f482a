//! `hearth zone`: a member's own DNS zones: claim a domain, prove it with a TXT record,
//! edit its records and the names that follow a VM. Members see only their own.

use clap::Subcommand;
use hearth_types::api::{FollowVm, NewZone, ZoneRow};
use hearth_types::desired::RecordSet;
use serde_json::Value;

use crate::client::{ApiClient, ClientError};
use crate::output::{print_json, print_table, report};

#[derive(Subcommand)]
pub enum ZoneCommand {
    /// Claim a domain you own. Put the TXT record this prints at your current DNS host,
    /// then run `hearth zone verify DOMAIN`; afterwards point the domain's NS records at
    /// the co-op's name servers (`hearth zone show DOMAIN` lists them).
    Add {
        domain: String,
        /// Admins: claim it for this account.
        #[arg(long)]
        owner: Option<String>,
    },
    /// Your zones (admins: everyone's), verified or not.
    List,
    /// A zone's challenge, records and followed names.
    Show { domain: String },
    /// Check the TXT record and start answering for the domain on every server.
    Verify {
        domain: String,
        /// Admins: approve the claim without the TXT record.
        #[arg(long)]
        approve: bool,
    },
    /// Set the record set of NAME and TYPE (replacing it): `hearth zone set example.org
    /// www A 192.0.2.7`, `... @ MX 10 mail.example.org.`, `... @ CAA 0 issue letsencrypt.org`,
    /// `... _sip._tcp SRV 10 5 5060 sip.example.org.`. Several values of one type are
    /// separated by `,`: `www A 192.0.2.7, 192.0.2.8`.
    Set {
        domain: String,
        /// Relative to the domain: `www`, `@` for the domain itself.
        name: String,
        /// A, AAAA, CNAME, MX, TXT, SRV or CAA.
        rtype: String,
        /// The value, as a zone file writes it.
        #[arg(required = true, num_args = 1..)]
        value: Vec<String>,
        #[arg(long)]
        ttl: Option<u32>,
    },
    /// Remove the record set of NAME and TYPE.
    Unset {
        domain: String,
        name: String,
        rtype: String,
    },
    /// Make NAME answer the addresses of your VM, following it when they change; with
    /// --stop, no more.
    Follow {
        domain: String,
        name: String,
        #[arg(required_unless_present = "stop")]
        vm: Option<String>,
        #[arg(long)]
        stop: bool,
    },
    /// Give the domain up: the servers stop answering for it.
    Rm { domain: String },
}

pub fn zone(client: &ApiClient, json: bool, command: ZoneCommand) -> Result<(), ClientError> {
    match command {
        ZoneCommand::Add { domain, owner } => {
            let body = NewZone {
                apex: domain.clone(),
                owner,
            };
            let answer: Value = client.post_json("/v1/zones", &body)?;
            if json {
                print_json(&answer);
                return Ok(());
            }
            let row: ZoneRow = client.get(&format!("/v1/zones/{domain}"))?;
            println!(
                "{}: claimed. Put this TXT record at your current DNS host, then run `hearth zone verify {}`:\n{}. TXT \"{}\"",
                row.zone.apex, row.zone.apex, row.challenge_name, row.zone.challenge
            );
            Ok(())
        }
        ZoneCommand::List => {
            let rows: Vec<ZoneRow> = client.get("/v1/zones")?;
            if json {
                print_json(&rows);
                return Ok(());
            }
            print_table(
                &["DOMAIN", "OWNER", "VERIFIED", "SETS", "FOLLOWS"],
                rows.iter().map(|r| {
                    vec![
                        r.zone.apex.clone(),
                        r.zone.owner.clone(),
                        if r.zone.verified { "yes" } else { "no" }.to_owned(),
                        r.zone.records.len().to_string(),
                        r.zone.follows.len().to_string(),
                    ]
                }),
            );
            Ok(())
        }
        ZoneCommand::Show { domain } => show(client, json, &domain),
        ZoneCommand::Verify { domain, approve } => {
            let query = if approve { "?approve=true" } else { "" };
            let answer: Value = client.post(&format!("/v1/zones/{domain}/verify{query}"))?;
            report(
                json,
                &answer,
                &format!("{domain}: verified; every server answers for it"),
            );
            Ok(())
        }
        ZoneCommand::Set {
            domain,
            name,
            rtype,
            value,
            ttl,
        } => set(client, json, &domain, name, &rtype, &value, ttl),
        ZoneCommand::Unset {
            domain,
            name,
            rtype,
        } => {
            let answer: Value =
                client.delete(&format!("/v1/zones/{domain}/records/{name}/{rtype}"))?;
            report(json, &answer, &format!("{domain}: {name} {rtype} removed"));
            Ok(())
        }
        ZoneCommand::Follow {
            domain,
            name,
            vm,
            stop,
        } => follow(client, json, &domain, &name, vm.filter(|_| !stop)),
        ZoneCommand::Rm { domain } => {
            let answer: Value = client.delete(&format!("/v1/zones/{domain}"))?;
            report(json, &answer, &format!("{domain}: released"));
            Ok(())
        }
    }
}

/// Puts the set of NAME and TYPE; several values are separated by `,`.
fn set(
    client: &ApiClient,
    json: bool,
    domain: &str,
    name: String,
    rtype: &str,
    value: &[String],
    ttl: Option<u32>,
) -> Result<(), ClientError> {
    let values = hearth_types::record_text::parse_values(rtype, &value.join(" "))
        .map_err(ClientError::Usage)?;
    let done = format!("{domain}: {name} {rtype} set");
    let set = RecordSet { name, ttl, values };
    let answer: Value = client.put(&format!("/v1/zones/{domain}/records"), &set)?;
    report(json, &answer, &done);
    Ok(())
}

/// Makes NAME follow a VM, or (`None`) no more.
fn follow(
    client: &ApiClient,
    json: bool,
    domain: &str,
    name: &str,
    vm: Option<String>,
) -> Result<(), ClientError> {
    let path = format!("/v1/zones/{domain}/follows/{name}");
    let (answer, done): (Value, String) = match vm {
        Some(vm) => (
            client.put(&path, &FollowVm { vm: vm.clone() })?,
            format!("{name}.{domain} follows {vm}"),
        ),
        None => (
            client.delete(&path)?,
            format!("{name}.{domain} follows no VM"),
        ),
    };
    report(json, &answer, &done);
    Ok(())
}

fn show(client: &ApiClient, json: bool, domain: &str) -> Result<(), ClientError> {
    let row: ZoneRow = client.get(&format!("/v1/zones/{domain}"))?;
    if json {
        print_json(&row);
        return Ok(());
    }
    let zone = &row.zone;
    println!("{} (owner {})", zone.apex, zone.owner);
    match zone.verified {
        true => println!("verified: every server answers for it"),
        false => println!(
            "not verified: put {}. TXT \"{}\" at your DNS host, then `hearth zone verify {}`",
            row.challenge_name, zone.challenge, zone.apex
        ),
    }
    let mut rows: Vec<Vec<String>> = zone
        .records
        .values()
        .flat_map(|set| {
            set.values.iter().map(move |value| {
                vec![
                    set.name.clone(),
                    value.type_name().to_owned(),
                    value.value_text(),
                ]
            })
        })
        .collect();
    rows.extend(
        zone.follows
            .iter()
            .map(|(name, vm)| vec![name.clone(), "A/AAAA".into(), format!("follows VM {vm}")]),
    );
    print_table(&["NAME", "TYPE", "VALUE"], rows.into_iter());
    Ok(())
}
