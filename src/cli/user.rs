//! `portcullis user`: the users file (argon2id hashes; bcrypt accepted).

use super::ConfigArgs;
use crate::fsio::Owner;
use crate::users::{UsersError, hash_password, read_users, valid_name, write_users};
use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct UserArgs {
    #[command(subcommand)]
    action: UserAction,
    #[command(flatten)]
    config: ConfigArgs,
    /// Overrides auth.users_file.
    #[arg(long, global = true)]
    users_file: Option<PathBuf>,
}

#[derive(Debug, clap::Subcommand)]
enum UserAction {
    /// Add a user or change their password.
    Add {
        name: String,
        /// Read the password from the first line of standard input instead of a prompt.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Remove a user.
    Del { name: String },
    /// List user names.
    List,
}

pub fn run(args: UserArgs) -> anyhow::Result<i32> {
    // A users file made here belongs to whoever owns the data directory (the
    // service's user once packaged), so that the server can read it.
    let (path, new_owner) = match &args.users_file {
        Some(p) => {
            let data_dir = args.config.load().ok().map(|c| c.server.data_dir);
            (p.clone(), data_dir.and_then(|d| Owner::of(&d).ok()))
        }
        None => {
            let config = args.config.load()?;
            let owner = Owner::of(&config.server.data_dir).ok();
            (config.users_file(), owner)
        }
    };
    let mut users = read_users(&path)?;
    match args.action {
        UserAction::Add {
            name,
            password_stdin,
        } => {
            if !valid_name(&name) {
                return Err(UsersError::BadName(name).into());
            }
            let password = if password_stdin {
                let mut line = String::new();
                std::io::stdin().lock().read_line(&mut line)?;
                line.trim_end_matches(['\r', '\n']).to_string()
            } else {
                if !std::io::stdin().is_terminal() {
                    anyhow::bail!(
                        "no terminal to ask the password on: pipe it in with --password-stdin \
                         (echo 'PASSWORD' | portcullis user add {name} --password-stdin)"
                    );
                }
                let first = rpassword::prompt_password(format!("Password for {name}: "))?;
                let again = rpassword::prompt_password("Again: ")?;
                if first != again {
                    anyhow::bail!("the passwords differ; nothing changed");
                }
                first
            };
            if password.is_empty() {
                anyhow::bail!("empty password refused");
            }
            let existed = users
                .insert(name.clone(), hash_password(&password)?)
                .is_some();
            write_users(&path, &users, new_owner)?;
            outln!(
                "{} {name} in {}",
                if existed { "updated" } else { "added" },
                path.display()
            );
        }
        UserAction::Del { name } => {
            if users.remove(&name).is_none() {
                return Err(UsersError::NoSuchUser(name).into());
            }
            write_users(&path, &users, new_owner)?;
            outln!("removed {name} from {}", path.display());
        }
        UserAction::List => {
            for name in users.keys() {
                outln!("{name}");
            }
        }
    }
    Ok(0)
}
