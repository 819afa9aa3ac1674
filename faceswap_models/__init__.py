"""FlowFace++ networks: face MAE (`mae`), swap generator Fswa (`swap`, `fusion`, `decoder`), shape
discriminator Dshape (`shape`), discriminators, losses, auxiliary networks, and their frozen configs
(`config`, importable without torch: the params tree reads it). Import from the modules."""
