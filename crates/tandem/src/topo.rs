//! `tandem topology check|show`.

use std::path::Path;
use std::process::ExitCode;

/// Prints every problem of a topology file, or that it is valid. Exit 1 when invalid.
pub fn check(file: &Path) -> anyhow::Result<ExitCode> {
    match topology::load(file) {
        Ok(t) => {
            println!(
                "{}: valid topology `{}` ({} sites, {} servers, {} pools, {} stores, {} pairs, {} log-shipping links)",
                file.display(),
                t.name,
                t.sites.len(),
                t.servers.len(),
                t.pools.len(),
                t.stores.len(),
                t.pairs.len(),
                t.log_shipping.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(diags) => {
            eprintln!("{diags}");
            eprintln!("{}: {} problem(s) found", file.display(), diags.0.len());
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Prints a topology as tables.
pub fn show(file: &Path) -> anyhow::Result<ExitCode> {
    let t = match topology::load(file) {
        Ok(t) => t,
        Err(diags) => {
            eprintln!("{diags}");
            return Ok(ExitCode::FAILURE);
        }
    };
    println!("Topology `{}` — SIP domain {}\n", t.name, t.sip_domain);
    for table in t.tables() {
        println!("{}", table.title);
        if table.rows.is_empty() {
            println!("  (none)\n");
            continue;
        }
        println!("{}\n", crate::render_table(&table.header, &table.rows));
    }
    Ok(ExitCode::SUCCESS)
}
