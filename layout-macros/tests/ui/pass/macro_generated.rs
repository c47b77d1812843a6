//! A catalog written by `macro_rules!`, its version passed as an expression fragment.

use layout_core::LayoutFeature;

macro_rules! catalog {
    ($name:ident { $($variant:ident = $version:expr, $description:expr;)* }) => {
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, LayoutFeature)]
        enum $name {
            $(
                #[layout(version = $version, description = $description)]
                $variant,
            )*
        }
    };
}

catalog!(Generated {
    Initial = 0, "Initial layout";
    Next = 1, "Next layout";
});

fn main() {
    assert_eq!(Generated::ALL, [Generated::Initial, Generated::Next]);
    assert_eq!(Generated::Next.layout_version(), 1);
    assert_eq!(Generated::Next.description(), "Next layout");
}
