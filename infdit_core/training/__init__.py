"""Training and evaluation: the training loop, its data, and the PSNR/SSIM evaluation."""
