"""miras_gpu: the MIRAS op API on GPU backends (torch, triton, cupy) - in progress."""
