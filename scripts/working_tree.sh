# Sourced by the check scripts: copy_working_tree ROOT DEST copies the checkout at ROOT into the
# existing folder DEST (tracked and untracked files, not ignored ones: no build outputs).
copy_working_tree() {
    git -C "$1" ls-files -z --cached --others --exclude-standard \
        | tar -C "$1" --null -T - --ignore-failed-read -cf - | tar -C "$2" -xf -
}
