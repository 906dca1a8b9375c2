" :checkhealth hexacoder on Neovim 0.7, which looks for this autoload function.
function! health#hexacoder#check() abort
  lua require('hexacoder.health').check()
endfunction
