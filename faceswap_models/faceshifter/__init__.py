"""FaceShifter (Li et al. 2019): AEI-Net, HEAR-Net, their multi-scale discriminator, configs and losses."""
