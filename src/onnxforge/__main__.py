from onnxforge.cli.app import main

if __name__ == "__main__":  # guarded: spawned evaluation workers import this module as __mp_main__
    raise SystemExit(main())
