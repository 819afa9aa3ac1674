"""HifiFace (Wang et al., IJCAI 2021): 3D shape-aware identity + Semantic Facial Fusion, trained by stage train_hififace."""
