/// jemalloc instead of glibc's malloc: glibc spent about a tenth of the CPU
/// of a relayed message (arena locks, consolidation, and madvise with TLB
/// shootdowns), kept each blocking thread's freed argon2 buffers, and an
/// idle connection cost 8.2 KB against jemalloc's 6.2 KB (README "Performance").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use clap::Parser;

fn main() {
    let cli = portcullis::cli::Cli::parse();
    match portcullis::cli::run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("portcullis: error: {e:#}");
            std::process::exit(2);
        }
    }
}
