#![doc = include_str!("../docs/migration.md")]
