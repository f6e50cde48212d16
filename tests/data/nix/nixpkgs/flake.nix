{
  # A stand-in for nixpkgs, offline: `ripgrep` is a tiny shell script called rg.
  # The builder is the host's /bin/sh (Debian's nix has no sandbox shell), and a build
  # has no PATH, so every tool is named by its absolute path.
  description = "onix test nixpkgs: ripgrep as a two-line script";

  outputs = { self }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      ripgrep = system: derivation {
        name = "ripgrep-14.1.0-onix-test";
        inherit system;
        builder = "/bin/sh";
        args = [ "-c" ''
          /bin/mkdir -p $out/bin
          printf '#!/bin/sh\necho "ripgrep 14.1.0 (onix test stand-in) $*"\n' > $out/bin/rg
          /bin/chmod 0555 $out/bin/rg
        '' ];
      };
      per = f: builtins.listToAttrs (map (system: { name = system; value = f system; }) systems);
    in {
      packages = per (system: { ripgrep = ripgrep system; default = ripgrep system; });
    };
}
