"""FaceDancer (Rosberg et al., WACV 2023): AFFA + IFSR, trained by stages ifsr_margins and train_facedancer."""
