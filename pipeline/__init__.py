"""An InstructGPT-style RLHF pipeline (SFT -> reward model -> PPO) on the Hugging Face stack."""
