use layout_core::LayoutFeature;

#[derive(LayoutFeature)]
enum Catalog {
    #[layout(version = 0, description = "Initial layout")]
    Initial,
    #[layout(version = 1, description = "Buckets carry a storage layout")]
    Buckets,
    #[layout(version = 3, description = "Multi-tenancy tables")]
    Tenants,
    #[layout(version = 7, description = "Snapshots in their own table")]
    Snapshots,
}

fn main() {}
