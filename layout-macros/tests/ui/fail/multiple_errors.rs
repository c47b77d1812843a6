//! Every problem is reported at once, each at its own token.
use layout_core::LayoutFeature;

#[derive(LayoutFeature)]
pub enum Catalog {
    #[layout(version = 1, description = "Initial layout")]
    Initial,
    #[layout(version = 3, description = "")]
    Buckets(u32),
    #[layout(version = 2, descriptoin = "Multi-tenancy tables", since = "1.4")]
    Tenants,
    Snapshots,
    #[layout(version = 3, description = "Quotas", deprecated)]
    Quotas,
}

fn main() {}
